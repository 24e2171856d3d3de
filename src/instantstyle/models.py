"""Where models come from: local paths, Hub ids (through huggingface_hub's cache), or ``tiny``.

A model reference is one string, and every loader here takes every kind:
- ``tiny`` / ``tiny-sd15``: the built-in random-weight test models (``instantstyle.sources.tiny``,
  ``sources.tiny_sd15``), sources like any other: ``--base tiny`` implies the tiny adapter, image
  encoder and ControlNets (``default_adapter``, ``default_image_encoder``, ``default_controlnet``),
  ``--base tiny-sd15`` its own (and its ViT-H text tower, ``default_content_text_encoder``);
- a local file or directory (anything that exists on disk, or starts with ``/``, ``./``, ``~``);
- ``owner/repo``: a whole Hub repository (diffusers layout for a base model);
- ``owner/repo/sub/path``: a file or folder inside a Hub repository, e.g.
  ``h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors``.

Hub downloads go through ``huggingface_hub`` and its cache, so ``HF_HUB_OFFLINE=1`` and
``HF_HOME`` work as everywhere else. Anything missing raises ``ModelNotFoundError`` naming what
is missing and the command that fetches it.

Two families load: SDXL and SD1.5 (``base_family`` reads which from a few KB, before the weights;
``blocks.family`` reads it from the loaded UNet's structure). Their defaults differ
(``sources.FAMILY_DEFAULTS``): an SD1.5 base implies ``ip-adapter_sd15``, the ViT-H image encoder and,
for content subtraction, the ViT-H text tower.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from . import single_file
from .download import cached_file, hub_reachable, missing, resolve_file
from .errors import InstantStyleError
from .images import image_processor
from .sources import (
    DEFAULT_ADAPTER,
    DEFAULT_BASE,
    DEFAULT_CONTROLNET_CANNY,
    DEFAULT_CONTROLNET_TILE,
    DEFAULT_IMAGE_ENCODER,
    FAMILY_DEFAULTS,
    SD15_ADAPTER,
    SD15_BASE,
    SD15_IMAGE_ENCODER,
    SD15_PLUS_ADAPTER,
    TINY,
    TINY_BASES,
    TINY_PLUS,
    TINY_REFS,
    TINY_SD15,
    TINY_SD15_PLUS,
    TINY_VIT_H,
    VIT_H_IMAGE_ENCODER,
    Source,
    canonical_id,
    family_default,
    is_tiny,
    offline,
    parse_source,
)
from .sources import default_image_encoder as _default_image_encoder

__all__ = [  # re-exported so ``models`` is the one place front ends and tasks take models from
    "DEFAULT_ADAPTER",
    "DEFAULT_BASE",
    "DEFAULT_CONTROLNET_CANNY",
    "DEFAULT_CONTROLNET_TILE",
    "DEFAULT_IMAGE_ENCODER",
    "FAMILY_DEFAULTS",
    "SD15_ADAPTER",
    "SD15_BASE",
    "SD15_IMAGE_ENCODER",
    "SD15_PLUS_ADAPTER",
    "TINY",
    "TINY_BASES",
    "TINY_PLUS",
    "TINY_REFS",
    "TINY_SD15",
    "TINY_SD15_PLUS",
    "TINY_VIT_H",
    "VIT_H_IMAGE_ENCODER",
    "Source",
    "cached_file",
    "canonical_id",
    "default_adapter",
    "default_controlnet",
    "default_image_encoder",
    "family_default",
    "image_processor",
    "is_tiny",
    "missing",
    "offline",
    "parse_source",
    "resolve_file",
]


def tiny_part(name: str, ref: str = TINY) -> Any:
    """A fresh copy of one part of a built-in tiny model.

    ``tiny`` (``sources.tiny.TinyModels``: ``pipe``, ``image_encoder``, ``feature_extractor``,
    ``adapter_state_dict``; ``controlnet``) or ``tiny-sd15`` (``sources.tiny_sd15.TinySD15``: the
    same, plus ``content_text``, ``content_tokenizer`` and ``plus_state_dict``). Each is built once per process and
    copied, so each load owns its modules, and all parts come from the same build (same seeds,
    same weights).
    """
    import copy

    if ref == TINY_SD15:
        return copy.deepcopy(
            _tiny_sd15_controlnet() if name == "controlnet" else getattr(_tiny_sd15_models(), name)
        )
    if name == "controlnet":
        return copy.deepcopy(_tiny_controlnet())
    if name in ("vit_h_encoder", "plus_state_dict", "vit_h_state_dict"):  # sources.tiny_adapters
        return copy.deepcopy(getattr(_tiny_adapters(), name))
    return copy.deepcopy(getattr(_tiny_models(), name))


@functools.lru_cache(maxsize=1)
def _tiny_models():
    from .sources.tiny import build_tiny

    return build_tiny()


@functools.lru_cache(maxsize=1)
def _tiny_adapters():
    from .sources.tiny_adapters import build_tiny_adapters

    return build_tiny_adapters(_tiny_models().pipe.unet)


@functools.lru_cache(maxsize=1)
def _tiny_controlnet():
    from .sources.tiny import tiny_controlnet

    return tiny_controlnet()


@functools.lru_cache(maxsize=1)
def _tiny_sd15_models():
    from .sources.tiny_sd15 import build_tiny_sd15

    return build_tiny_sd15()


@functools.lru_cache(maxsize=1)
def _tiny_sd15_controlnet():
    from .sources.tiny_sd15 import tiny_sd15_controlnet

    return tiny_sd15_controlnet()


# diffusers' pipeline class names (model_index.json's ``_class_name``) of each family we load.
PIPELINE_FAMILY = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
    "StableDiffusionPipeline": "sd15",
    "StableDiffusionImg2ImgPipeline": "sd15",
    "StableDiffusionInpaintPipeline": "sd15",
}
BASE_PIPELINE = {"sdxl": "StableDiffusionXLPipeline", "sd15": "StableDiffusionPipeline"}
# Only for naming the right defaults and fetch command before a base's model_index.json is on disk.
KNOWN_BASE_FAMILIES = {DEFAULT_BASE: "sdxl", SD15_BASE: "sd15", "runwayml/stable-diffusion-v1-5": "sd15"}


def base_family(spec: str) -> str:
    """``sdxl`` | ``sd15`` for a base reference, from a few KB (no weights).

    A tiny base is its own; a single file is read from its header (``single_file.family_of_keys``);
    a diffusers directory or Hub repository from ``model_index.json``'s ``_class_name`` (a few
    hundred bytes, fetched if online). What cannot be read (offline and not cached) is SD1.5 for the
    SD1.5 ids we name (``KNOWN_BASE_FAMILIES``, so the fetch command names the right files) and SDXL,
    the default family, otherwise; the loaded UNet's structure (``blocks.family``) has the last word.
    """
    if spec == TINY_SD15:
        return "sd15"
    if is_tiny(spec):
        return "sdxl"
    try:
        if single_file.is_single_file(spec):
            src = parse_source(spec)
            path = src.local if src.local is not None else _cached_hub_file(src)
            if path is None or not Path(path).is_file():
                return "sdxl"
            return "sd15" if single_file.family_of_keys(single_file.read_keys(path)) == "sd15" else "sdxl"
        index = _model_index(spec, fetch=str(spec).strip("/") not in KNOWN_BASE_FAMILIES)
    except InstantStyleError:
        return "sdxl"
    if index is None:  # nothing to read yet: the reference ids we name ourselves, else SDXL
        return KNOWN_BASE_FAMILIES.get(str(spec).strip("/"), "sdxl")
    return PIPELINE_FAMILY.get(str(index.get("_class_name")), "sdxl")


def _cached_hub_file(src: Source) -> str | None:
    return cached_file(src.repo_id, src.subpath) if src.repo_id and src.subpath else None


def _model_index(spec: str, fetch: bool = True) -> dict | None:
    """A diffusers base's ``model_index.json`` (local; from the Hub cache, or fetched -- one small
    file -- if ``fetch`` and not offline), or None when it cannot be had."""
    import json

    src = parse_source(spec)
    if src.local is not None:
        path = src.local / "model_index.json"
        found = str(path) if path.is_file() else None
    else:
        prefix = f"{src.subpath.rstrip('/')}/" if src.subpath else ""
        found = cached_file(str(src.repo_id), prefix + "model_index.json")
        if found is None and fetch and hub_reachable():  # never a slow retry on an unreachable Hub
            try:
                found = str(resolve_file(f"{src.repo_id}/{prefix}model_index.json", "base model"))
            except InstantStyleError:
                found = None
    return json.loads(Path(found).read_text()) if found else None


def default_adapter(base: str) -> str:
    """The IP-Adapter used with ``base`` when none is named: its family's (``sources.FAMILY_DEFAULTS``),
    the tiny one for a tiny base."""
    return str(family_default(base, "adapter", base_family(base)))


def default_image_encoder(base: str, adapter: str | None = None) -> str:
    """The image encoder used with ``base`` and ``adapter`` when none is named: the one the adapter
    names (``sources.default_image_encoder``), else the base family's (a tiny base's own)."""
    return _default_image_encoder(base, adapter, base_family(base))


def default_controlnet(kind: str, base: str) -> str:
    """The ControlNet of a built-in kind (``canny``, ``tile``) for ``base``'s family."""
    return str(family_default(base, kind, base_family(base)))


def default_content_text_encoder(base: str) -> str | None:
    """The projected text tower content subtraction uses with ``base`` when none is named: None for
    SDXL (its own ``text_encoder_2``), the ViT-H tower for SD1.5 (``ip-adapter_sd15``'s space)."""
    return family_default(base, "content_text_encoder", base_family(base))


def device_and_dtype(device: str | None, dtype: str | torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """Defaults that work anywhere: CUDA fp16, else MPS fp16, else CPU fp32."""
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InstantStyleError(
            f"--device {device!r} is not a torch device; use cpu, cuda, cuda:1 or mps"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InstantStyleError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    if dtype is None:
        return dev, (torch.float16 if dev.type in ("cuda", "mps") else torch.float32)
    if isinstance(dtype, torch.dtype):
        return dev, dtype
    names = {
        "fp16": torch.float16,
        "float16": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype not in names:
        raise InstantStyleError(f"--dtype {dtype!r} is not one of fp16, bf16, fp32")
    return dev, names[dtype]


def load_base_pipeline(
    spec: str, dtype: torch.dtype, variant: str | None = None, base_config: str | None = None
):
    """A ``StableDiffusionXLPipeline`` or ``StableDiffusionPipeline`` (SD1.5) from a local dir, Hub id,
    single file or a tiny model (float32 for tiny).

    A diffusers base's family is its ``model_index.json``'s ``_class_name``. A single
    ``.safetensors`` checkpoint (local, or Hub ``owner/repo/file.safetensors``) goes through
    ``from_single_file`` with its family's reference configs; ``base_config`` overrides those.
    SD1.5 loads without its safety checker (as SDXL, which has none; docs/families.md).
    """
    if spec in TINY_BASES:
        return tiny_part("pipe", spec)
    import diffusers

    src = parse_source(spec)
    if single_file.is_single_file(spec):
        return single_file.load_pipeline(resolve_file(spec, "base model"), spec, dtype, base_config)
    if src.local is not None:
        if not (src.local / "model_index.json").is_file():
            raise missing("base model", src, " as a diffusers directory (no model_index.json)")
        target = str(src.local)
    else:
        target = src.repo_id if not src.subpath else src.spec
    variant = variant or only_variant(src)
    index = _model_index(spec) or {}
    class_name = str(index.get("_class_name", BASE_PIPELINE["sdxl"]))
    if class_name not in PIPELINE_FAMILY:
        raise InstantStyleError(
            f"base model '{spec}' is a {class_name}; supported bases are SDXL and SD1.5 "
            "(StableDiffusionXLPipeline, StableDiffusionPipeline)"
        )
    family = PIPELINE_FAMILY[class_name]
    try:
        kwargs: dict[str, Any] = {"dtype": dtype}
        if variant:
            kwargs["variant"] = variant
        if family == "sd15":
            kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return getattr(diffusers, BASE_PIPELINE[family]).from_pretrained(target, **kwargs)
    except (OSError, ValueError) as exc:
        if src.local is None and (
            "offline" in str(exc).lower()
            or "cache" in str(exc).lower()
            or "connect" in str(exc).lower()
            or isinstance(exc, OSError)
        ):
            raise missing("base model", src) from None
        raise InstantStyleError(
            f"base model '{spec}' could not be loaded: {str(exc).splitlines()[0]}"
        ) from None


def load_vae(spec: str, dtype: torch.dtype, unet, base_vae=None):
    """An ``AutoencoderKL`` to replace the base's: a diffusers dir, Hub id (``owner/repo[/sub]``) or one file.

    A single file takes the base's VAE config (its layout is the same across SD1.5 and SDXL). A VAE
    whose latent width differs from the UNet's (SD3, FLUX) or whose scaling factor says it belongs to
    another family is a one-line error.
    """
    from diffusers import AutoencoderKL

    src = parse_source(spec)
    try:
        if single_file.is_single_file(spec):
            path = resolve_file(spec, "VAE")
            family = single_file.family_of_keys(single_file.read_keys(path))
            if family not in ("vae", "sdxl", "sd15"):
                raise InstantStyleError(f"--vae '{spec}' is {single_file.FAMILY_NAMES[family]}, not a VAE")
            import tempfile

            with tempfile.TemporaryDirectory(prefix="instantstyle-vae-") as tmp:
                config = _write_vae_config(base_vae, Path(tmp))
                vae = AutoencoderKL.from_single_file(str(path), config=config, dtype=dtype)
        elif src.local is not None:
            if not (src.local / "config.json").is_file():
                raise missing("VAE", src, " as a diffusers AutoencoderKL directory (no config.json)")
            vae = AutoencoderKL.from_pretrained(str(src.local), dtype=dtype)
        else:
            kwargs = {"subfolder": src.subpath} if src.subpath else {}
            vae = AutoencoderKL.from_pretrained(src.repo_id, dtype=dtype, **kwargs)
    except OSError:
        raise missing("VAE", src) from None
    except ValueError as exc:
        raise InstantStyleError(f"--vae '{spec}' could not be loaded: {str(exc).splitlines()[0]}") from None
    if vae.config.latent_channels != unet.config.in_channels:
        raise InstantStyleError(
            f"--vae '{spec}' has {vae.config.latent_channels} latent channels but the base's UNet takes "
            f"{unet.config.in_channels}: it is a VAE of another model family (SD3/FLUX use 16); use an SDXL VAE "
            "such as madebyollin/sdxl-vae-fp16-fix"
        )
    if base_vae is not None and vae.config.scaling_factor != base_vae.config.scaling_factor:
        raise InstantStyleError(
            f"--vae '{spec}' has scaling_factor {vae.config.scaling_factor} but the base's VAE has "
            f"{base_vae.config.scaling_factor}: it is a VAE of another model family (SD1.5 0.18215, SDXL 0.13025)"
        )
    return vae.eval()


def _write_vae_config(base_vae, directory: Path) -> str | None:
    """The base VAE's config as ``directory/config.json`` (``from_single_file`` reads configs from disk)."""
    import json

    if base_vae is None:
        return None
    config = {k: v for k, v in dict(base_vae.config).items() if not k.startswith("_")}
    (directory / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **config}))
    return str(directory)


def only_variant(src: Source) -> str | None:
    """``fp16`` when the base's UNet is on disk (folder or Hub cache) only as fp16 weights.

    ``instantstyle download base`` fetches the fp16 files only; loading them then needs no
    ``--variant fp16``. None when the plain weights exist, or nothing is on disk yet.
    """

    def present(rel: str) -> bool:
        if src.local is not None:
            return (src.local / rel).is_file()
        prefix = f"{src.subpath.rstrip('/')}/" if src.subpath else ""
        return cached_file(src.repo_id, prefix + rel) is not None

    plain = any(present(f"unet/diffusion_pytorch_model.{ext}") for ext in ("safetensors", "bin"))
    fp16 = any(present(f"unet/diffusion_pytorch_model.fp16.{ext}") for ext in ("safetensors", "bin"))
    return "fp16" if fp16 and not plain else None


def load_adapter_state_dict(spec: str) -> dict:
    """An IP-Adapter's state dict (h94 layout) from a file, a Hub path or a tiny reference
    (``tiny``/``tiny-sd15``: the base's own; ``tiny-plus``/``tiny-vit-h``; ``tiny-sd15-plus``)."""
    if spec == TINY_SD15_PLUS:  # ip-adapter-plus_sd15 for the tiny SD1.5 (sources.tiny_sd15)
        return tiny_part("plus_state_dict", TINY_SD15)
    if spec in (TINY_PLUS, TINY_VIT_H):
        return tiny_part("plus_state_dict" if spec == TINY_PLUS else "vit_h_state_dict")
    if is_tiny(spec):
        return tiny_part("adapter_state_dict", spec)
    from .adapter import load_state_dict

    return load_state_dict(resolve_file(spec, "IP-Adapter"))


def load_image_encoder(spec: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """``CLIPVisionModelWithProjection`` and its ``CLIPImageProcessor`` from a dir, Hub path or ``tiny``
    (the tiny one in float32: the caller moves it with the pipeline)."""
    if spec == TINY_VIT_H:  # the tiny ViT-H-shaped encoder (same 224 px preprocessing)
        return tiny_part("vit_h_encoder"), tiny_part("feature_extractor")
    if is_tiny(spec):
        return tiny_part("image_encoder", spec), tiny_part("feature_extractor", spec)
    from transformers import CLIPVisionModelWithProjection

    src = parse_source(spec)
    if src.local is not None:
        if not (src.local / "config.json").is_file():
            raise missing(
                "image encoder", src, " as a CLIPVisionModelWithProjection directory (no config.json)"
            )
        where, kwargs = str(src.local), {}
    else:
        where, kwargs = src.repo_id, ({"subfolder": src.subpath} if src.subpath else {})
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(where, dtype=dtype, **kwargs)
    except OSError:
        raise missing("image encoder", src) from None
    size = encoder.config.image_size
    # h94's encoder folders carry no preprocessor config; diffusers uses the CLIP defaults too.
    return encoder.eval(), image_processor(size)


def load_text_encoder_with_projection(spec: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """A ``CLIPTextModelWithProjection`` + tokenizer (for content subtraction in another space:
    the ViT-H tower ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` for ViT-H adapters; ``tiny-sd15``'s own)."""
    if spec == TINY_SD15:
        return tiny_part("content_text", spec), tiny_part("content_tokenizer", spec)
    if is_tiny(spec):
        raise InstantStyleError(
            f"--content-text-encoder {spec}: the tiny SDXL subtracts with its own text_encoder_2; "
            "leave the option out (tiny-sd15 has a text tower of its own)"
        )
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    src = parse_source(spec)
    where, kwargs = (
        (str(src.local), {})
        if src.local is not None
        else (src.repo_id, {"subfolder": src.subpath} if src.subpath else {})
    )
    try:
        model = CLIPTextModelWithProjection.from_pretrained(where, dtype=dtype, **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(where, **kwargs)
    except OSError:
        raise missing("content text encoder", src) from None
    return model.eval(), tokenizer


def load_unet_config(spec: str) -> dict:
    """Only the UNet's ``config.json`` (kilobytes), for inspecting blocks without loading weights."""
    import json

    if spec == TINY:
        from .sources.tiny import tiny_unet_config

        return tiny_unet_config()
    if spec == TINY_SD15:
        from .sources.tiny_sd15 import tiny_sd15_unet_config

        return tiny_sd15_unet_config()

    if single_file.is_single_file(spec):  # the family's reference configs describe its UNet
        family = single_file.check_base_family(resolve_file(spec, "base model"), spec)
        return load_unet_config(single_file.REFERENCE_CONFIG[family])
    src = parse_source(spec)
    if src.local is not None:
        path = src.local / "unet" / "config.json"
        if not path.is_file():
            raise missing("base model", src, " as a diffusers directory (no unet/config.json)")
    else:
        path = resolve_file(
            f"{src.repo_id}/{src.subpath + '/' if src.subpath else ''}unet/config.json", "base model"
        )
    return json.loads(Path(path).read_text())


def meta_unet(config: dict):
    """A UNet with this config on the meta device: its structure, no memory, no weights."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel.from_config(config)


def load_style_encoder(spec: str, device: str | None = None, dtype: str | torch.dtype | None = None):
    """(encoder, feature extractor, canonical id) for the image encoder alone."""
    dev, dt = device_and_dtype(device, dtype)
    encoder, extractor = load_image_encoder(spec, dt)
    return encoder.to(dev, dt), extractor, canonical_id(spec)


def load_controlnet(spec: str, dtype: torch.dtype):
    """A ``ControlNetModel`` from a diffusers dir, Hub path or ``tiny`` (float32 for tiny)."""
    if is_tiny(spec):
        return tiny_part("controlnet", spec)
    from diffusers import ControlNetModel

    src = parse_source(spec)
    where = str(src.local) if src.local is not None else src.repo_id
    kwargs = {"subfolder": src.subpath} if src.local is None and src.subpath else {}
    try:
        return ControlNetModel.from_pretrained(where, torch_dtype=dtype, **kwargs)
    except OSError:
        raise missing("ControlNet", src) from None
