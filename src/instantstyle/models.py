"""Where models come from: local paths, Hub ids (through huggingface_hub's cache), or ``tiny``.

A model reference is one string, and every loader here takes every kind:
- ``tiny``: the built-in random-weight test model (``instantstyle.sources.tiny``), a source like
  any other: ``--base tiny`` implies the tiny adapter, image encoder and ControlNets
  (``default_adapter``, ``default_image_encoder``, ``default_controlnet``);
- a local file or directory (anything that exists on disk, or starts with ``/``, ``./``, ``~``);
- ``owner/repo``: a whole Hub repository (diffusers layout for a base model);
- ``owner/repo/sub/path``: a file or folder inside a Hub repository, e.g.
  ``h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors``.

Hub downloads go through ``huggingface_hub`` and its cache, so ``HF_HUB_OFFLINE=1`` and
``HF_HOME`` work as everywhere else. Anything missing raises ``ModelNotFoundError`` naming what
is missing and the command that fetches it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from . import single_file
from .download import cached_file, missing, resolve_file
from .errors import InstantStyleError
from .images import image_processor
from .sources import (
    DEFAULT_ADAPTER,
    DEFAULT_BASE,
    DEFAULT_CONTROLNET_CANNY,
    DEFAULT_CONTROLNET_TILE,
    DEFAULT_IMAGE_ENCODER,
    TINY,
    TINY_PLUS,
    TINY_REFS,
    TINY_VIT_H,
    VIT_H_IMAGE_ENCODER,
    Source,
    canonical_id,
    default_adapter,
    default_controlnet,
    default_image_encoder,
    offline,
    parse_source,
)

__all__ = [  # re-exported so ``models`` is the one place front ends and tasks take models from
    "DEFAULT_ADAPTER",
    "DEFAULT_BASE",
    "DEFAULT_CONTROLNET_CANNY",
    "DEFAULT_CONTROLNET_TILE",
    "DEFAULT_IMAGE_ENCODER",
    "TINY",
    "TINY_PLUS",
    "TINY_REFS",
    "TINY_VIT_H",
    "VIT_H_IMAGE_ENCODER",
    "Source",
    "cached_file",
    "canonical_id",
    "default_adapter",
    "default_controlnet",
    "default_image_encoder",
    "image_processor",
    "missing",
    "offline",
    "parse_source",
    "resolve_file",
]


def tiny_part(name: str) -> Any:
    """A fresh copy of one part of the built-in tiny model (``sources.tiny.TinyModels``: ``pipe``,
    ``image_encoder``, ``feature_extractor``, ``adapter_state_dict``; ``controlnet``).

    The tiny model is built once per process and copied, so each load owns its modules, and all
    parts come from the same build as ``build_tiny()`` (same seeds, same weights).
    """
    import copy

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
    """A ``StableDiffusionXLPipeline`` from a local dir, Hub id, single file or ``tiny`` (float32 for tiny).

    A single ``.safetensors`` checkpoint (local, or Hub ``owner/repo/file.safetensors``) goes through
    ``from_single_file`` with its family's reference configs; ``base_config`` overrides those.
    """
    if spec == TINY:
        return tiny_part("pipe")
    from diffusers import StableDiffusionXLPipeline

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
    try:
        kwargs = {"dtype": dtype}
        if variant:
            kwargs["variant"] = variant
        return StableDiffusionXLPipeline.from_pretrained(target, **kwargs)
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
    """An IP-Adapter's state dict (h94 layout) from a file, a Hub path or ``tiny``/``tiny-plus``/``tiny-vit-h``."""
    if spec == TINY:
        return tiny_part("adapter_state_dict")
    if spec in (TINY_PLUS, TINY_VIT_H):
        return tiny_part("plus_state_dict" if spec == TINY_PLUS else "vit_h_state_dict")
    from .adapter import load_state_dict

    return load_state_dict(resolve_file(spec, "IP-Adapter"))


def load_image_encoder(spec: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """``CLIPVisionModelWithProjection`` and its ``CLIPImageProcessor`` from a dir, Hub path or ``tiny``
    (the tiny one in float32: the caller moves it with the pipeline)."""
    if spec == TINY:
        return tiny_part("image_encoder"), tiny_part("feature_extractor")
    if spec == TINY_VIT_H:  # the tiny ViT-H-shaped encoder (same 224 px preprocessing)
        return tiny_part("vit_h_encoder"), tiny_part("feature_extractor")
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
    """A ``CLIPTextModelWithProjection`` + tokenizer (for content subtraction in another space)."""
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
    if spec == TINY:
        return tiny_part("controlnet")
    from diffusers import ControlNetModel

    src = parse_source(spec)
    where = str(src.local) if src.local is not None else src.repo_id
    kwargs = {"subfolder": src.subpath} if src.local is None and src.subpath else {}
    try:
        return ControlNetModel.from_pretrained(where, torch_dtype=dtype, **kwargs)
    except OSError:
        raise missing("ControlNet", src) from None
