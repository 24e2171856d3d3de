"""Option groups several subcommands share: the model flags (and the one loader that reads them),
the baselines' options, and help text taken from the request schema."""

from __future__ import annotations

import argparse

from ..errors import InstantStyleError
from ..fast.options import SPEEDS

DTYPES = ["fp16", "bf16", "fp32", "float16", "bfloat16", "float32"]  # models.device_and_dtype reads each


def add_model_args(p: argparse.ArgumentParser, *, encoder_only: bool = False) -> None:
    from .. import models

    g = p.add_argument_group("models (local path, Hub 'owner/repo[/path]', or 'tiny' / 'tiny-sd15')")
    if not encoder_only:
        _add_base_args(g, models)
    g.add_argument(
        "--image-encoder",
        default=None,
        help="CLIPVisionModelWithProjection directory (default: the one the adapter reads: "
        f"{models.DEFAULT_IMAGE_ENCODER} for SDXL's, {models.VIT_H_IMAGE_ENCODER} for a *vit-h* adapter "
        "file and for SD1.5's)",
    )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    g.add_argument("--dtype", default=None, choices=DTYPES, help="default: fp16 on cuda/mps, fp32 on cpu")
    if not encoder_only:  # same names as instantstyle.fast.SPEEDS / memory.MEMORY_CHOICES (checked by a test)
        _add_speed_args(g)


def _add_base_args(g, models) -> None:
    g.add_argument(
        "--base",
        default=models.DEFAULT_BASE,
        help="SDXL or SD1.5 base model: a diffusers directory or Hub id, or one .safetensors checkpoint "
        "(an SDXL or SD1.5 finetune from Civitai, local or 'owner/repo/file.safetensors'); the family is "
        "read from the model (default: %(default)s)",
    )
    g.add_argument(
        "--base-config",
        default=None,
        help="diffusers configs for a single-file --base (Hub id or directory; configs only, a few KB; "
        "default: stabilityai/stable-diffusion-xl-base-1.0 for SDXL files, "
        "stable-diffusion-v1-5/stable-diffusion-v1-5 for SD1.5 files)",
    )
    g.add_argument(
        "--vae",
        default=None,
        help="replace the base's VAE: a diffusers directory, Hub id ('owner/repo[/subfolder]') or one "
        ".safetensors file. With fp16 (the CUDA default) the stock SDXL VAE overflows and diffusers "
        "decodes in fp32 (slower, more memory); madebyollin/sdxl-vae-fp16-fix decodes in fp16 "
        "with nearly the same picture",
    )
    g.add_argument(
        "--adapter",
        default=None,
        help="IP-Adapter .safetensors/.bin in the h94 layout: a global one (ip-adapter_sdxl, "
        "ip-adapter_sdxl_vit-h, ip-adapter_sd15) or an IP-Adapter Plus (ip-adapter-plus_sdxl_vit-h, "
        "ip-adapter-plus_sd15: patch features, no content subtraction); tiny-plus / tiny-vit-h / "
        "tiny-sd15-plus for the tiny ones (default: the base "
        f"family's, {models.DEFAULT_ADAPTER} for SDXL, {models.SD15_ADAPTER} for SD1.5)",
    )
    g.add_argument(
        "--variant", default=None, help="weights variant to fetch, e.g. fp16 (halves the download)"
    )
    g.add_argument(
        "--content-text-encoder",
        default=None,
        help="CLIPTextModelWithProjection for content subtraction when the image encoder's space "
        "is not text_encoder_2's (e.g. ViT-H adapters; on SD1.5 the default is the ViT-H tower "
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K, loaded at the first --content-prompt)",
    )


def _add_speed_args(g) -> None:
    g.add_argument(
        "--speed",
        default="auto",
        choices=list(SPEEDS),
        help="fast path (see docs/performance.md): auto = graphs on CUDA for generate/stylize/"
        "compare, max for serve, exact on CPU; plain = stock diffusers; exact = image branch only "
        "in active blocks; graphs = exact + CUDA graphs, no compilation (0.69x stock diffusers' "
        "time on an H200); max = the whole UNet compiled + CUDA graphs (0.56x; ~90 s to compile "
        "on first use); fast = regional compile. Not yet measured on a GPU: max-tuned = max + "
        "K/V once per call, no work in inactive IP layers, bf16 compiled VAE decode, tuned "
        "Inductor (same picture); max-autotune = max-tuned with autotuned kernels, for serve "
        "(minutes to compile once; see --compile-cache). Approximations, opt-in (change the "
        "picture slightly): fp8 (Hopper/Ada), fp8-max (row-wise fp8 inside the compiled graph), "
        "cfg-trunc (last 40%% of the steps without CFG), deepcache (deep blocks every other "
        "step), turbo (fp8-max + deepcache) (default: auto)",
    )
    g.add_argument(
        "--cfg-truncation",
        type=float,
        default=None,
        metavar="FRACTION",
        help="approximation: the last FRACTION of the steps without the unconditional half (e.g. 0.4; "
        "text-to-image only); adds to any --speed, 0 turns it off (default: the speed's, 0 "
        "except cfg-trunc's 0.4)",
    )
    g.add_argument(
        "--deepcache",
        type=int,
        default=None,
        metavar="N",
        dest="deepcache_interval",
        help="approximation: the deep UNet blocks every N-th step only, the steps between reuse their "
        "features (DeepCache; 2 = every other step); 0 turns it off (default: the speed's)",
    )
    g.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help="keep torch.compile's generated code and autotuning results in DIR, so a restart does not "
        "compile again (default: torch's, $TORCHINDUCTOR_CACHE_DIR or a temp folder)",
    )
    g.add_argument(
        "--memory",
        default="auto",
        choices=["auto", "normal", "balanced", "low", "lowest"],
        help="GPU memory layout (peaks at 1024 px on SDXL): normal ~16-18 GiB; balanced = text/image "
        "encoders streamed from the CPU, ~13 GiB, same speed; low = model CPU offload + 512 px "
        "VAE tiles, ~7 GiB (Plus ~12); lowest = every model but the VAE streamed layer by layer, "
        "~1.6 GiB (Plus ~3.5), ~4x slower; auto picks by the card's size (default: auto)",
    )


def speed_args(args) -> dict:
    """``--speed`` and its companion flags, as ``InstantStyle.from_pretrained`` takes them."""
    return {
        "speed": args.speed,
        "cfg_truncation": args.cfg_truncation,
        "deepcache_interval": args.deepcache_interval,
        "compile_cache": args.compile_cache,
    }


def load_model(
    args, *, device: str | None = None, cache_dir: bool = True, progress: bool | None = None, **extra
):
    """The generation model from the model flags (``add_model_args``): the one loader of every
    subcommand that generates (generate, stylize, compare, serve, eval, probe-blocks)."""
    from ..model import InstantStyle

    return InstantStyle.from_pretrained(
        args.base,
        args.adapter,
        args.image_encoder,
        device=device if device is not None else args.device,
        dtype=args.dtype,
        variant=args.variant,
        content_text_encoder=args.content_text_encoder,
        cache_dir=cache_dir,
        progress=not args.quiet if progress is None else progress,
        memory=args.memory,
        **speed_args(args),
        vae=args.vae,
        base_config=args.base_config,
        **extra,
    )


def method_help() -> str:
    from ..methods import METHODS

    return (
        "generation method: "
        + "; ".join(f"{m.name} = {m.summary} ({m.paper})" for m in METHODS.values())
        + " (default: instantstyle)"
    )


def method_fields() -> list[str]:
    """The baselines' options: the request fields in the schema's "method" group."""
    from ..config import GenerateRequest
    from ..schema_flags import meta

    return [n for n, f in GenerateRequest.model_fields.items() if meta(f).get("group") == "method"]


def add_method_args(p: argparse.ArgumentParser) -> None:
    """Options of the baselines (each is refused for a method that does not read it)."""
    from ..config import GROUPS, GenerateRequest
    from ..schema_flags import add_flags

    m = p.add_argument_group(GROUPS["method"])
    add_flags(m, GenerateRequest, method_fields(), unset=None)


def add_request_args(p, names: list[str]) -> None:
    """Flags for some request fields, generated from the schema (unset: the request's defaults)."""
    from ..config import GenerateRequest
    from ..schema_flags import add_flags

    add_flags(p, GenerateRequest, names, unset=None)


def method_params(args) -> dict:
    """The baseline options the user gave (unset ones keep the request's defaults)."""
    from ..config import GenerateRequest
    from ..schema_flags import given

    return given(args, GenerateRequest, method_fields())


def check_lora(base: str, req) -> None:
    """A B-LoRA directory must exist and match the base's UNet architecture (read from its config)."""
    from .. import models

    if not req.b_lora:
        return
    from ..methods.b_lora import read_info

    try:
        config = models.load_unet_config(base)  # any source, 'tiny' included
    except InstantStyleError:
        config = None  # the full load reports the missing model
    read_info(req.b_lora, config)
