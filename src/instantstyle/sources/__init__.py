"""Model references: one string says where a model comes from (see ``instantstyle.models``).

- ``tiny`` (SDXL) and ``tiny-sd15`` (SD1.5): the built-in random-weight test models, sources like
  any other: ``--base tiny`` implies the tiny adapter, image encoder and ControlNets
  (``default_adapter``, ``default_image_encoder``, ``default_controlnet``), and ``--base tiny-sd15``
  its own (an ``ip-adapter_sd15``-layout adapter, a ViT-H-shaped encoder and text tower);
- ``tiny-plus`` / ``tiny-vit-h`` (``--adapter``): the tiny IP-Adapter Plus and global ViT-H adapter;
  ``tiny-sd15-plus``: the tiny ``ip-adapter-plus_sd15`` (for ``--base tiny-sd15``); each implies
  ``--image-encoder tiny-vit-h``, the tiny ViT-H-shaped encoder (``sources.tiny_adapters``);
- a local file or directory (anything that exists on disk, or starts with ``/``, ``./``, ``~``);
- ``owner/repo``: a whole Hub repository (diffusers layout for a base model);
- ``owner/repo/sub/path``: a file or folder inside a Hub repository.

This module parses references only; ``download`` fetches them and ``models`` loads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InstantStyleError

DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_ADAPTER = "h94/IP-Adapter/sdxl_models/ip-adapter_sdxl.safetensors"
DEFAULT_IMAGE_ENCODER = "h94/IP-Adapter/sdxl_models/image_encoder"
DEFAULT_CONTROLNET_CANNY = "diffusers/controlnet-canny-sdxl-1.0"
DEFAULT_CONTROLNET_TILE = "xinsir/controlnet-tile-sdxl-1.0"
TINY = "tiny"
TINY_PLUS = (
    "tiny-plus"  # IP-Adapter Plus (Resampler over ViT-H patch features), as ip-adapter-plus_sdxl_vit-h
)
TINY_VIT_H = "tiny-vit-h"  # the global ViT-H adapter (ip-adapter_sdxl_vit-h), and the ViT-H image encoder
TINY_SD15 = "tiny-sd15"  # the tiny SD1.5 (sources.tiny_sd15): base, adapter, encoder and text tower at once
TINY_SD15_PLUS = (
    "tiny-sd15-plus"  # IP-Adapter Plus for the tiny SD1.5, as ip-adapter-plus_sd15 (ViT-H patches)
)
TINY_VIT_H_ADAPTERS = (TINY_PLUS, TINY_VIT_H, TINY_SD15_PLUS)  # the tiny adapters that read tiny-vit-h
TINY_BASES = (TINY, TINY_SD15)  # the tiny references that are base models (each its own adapter/encoder)
TINY_REFS = (TINY, TINY_PLUS, TINY_VIT_H, TINY_SD15, TINY_SD15_PLUS)  # every built-in tiny reference
# The image encoder each h94 adapter file reads (the *_vit-h files: OpenCLIP ViT-H/14).
VIT_H_IMAGE_ENCODER = "h94/IP-Adapter/models/image_encoder"

# Per-family defaults (SD1.5: InstantStyle's infer_style_sd15.py and h94's SD1.5 files).
SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_ADAPTER = "h94/IP-Adapter/models/ip-adapter_sd15.safetensors"
SD15_PLUS_ADAPTER = "h94/IP-Adapter/models/ip-adapter-plus_sd15.safetensors"  # Resampler, ViT-H patches
SD15_IMAGE_ENCODER = VIT_H_IMAGE_ENCODER  # ViT-H/14, 1024-d
VIT_H_TEXT = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # its text tower: content subtraction on ViT-H adapters
SD15_CONTROLNET_CANNY = "lllyasviel/control_v11p_sd15_canny"
SD15_CONTROLNET_TILE = "lllyasviel/control_v11f1e_sd15_tile"
FAMILY_DEFAULTS = {
    "sdxl": {
        "adapter": DEFAULT_ADAPTER,
        "image_encoder": DEFAULT_IMAGE_ENCODER,
        "canny": DEFAULT_CONTROLNET_CANNY,
        "tile": DEFAULT_CONTROLNET_TILE,
        "content_text_encoder": None,  # SDXL's own text_encoder_2 (bigG) is in the bigG image space
    },
    "sd15": {
        "adapter": SD15_ADAPTER,
        "image_encoder": SD15_IMAGE_ENCODER,
        "canny": SD15_CONTROLNET_CANNY,
        "tile": SD15_CONTROLNET_TILE,
        "content_text_encoder": VIT_H_TEXT,
    },
}


def is_tiny(spec) -> bool:
    """Whether ``spec`` names one of the built-in tiny references (``TINY_REFS``)."""
    return str(spec) in TINY_REFS


def family_default(base: str, what: str, family: str = "sdxl") -> str | None:
    """The model of kind ``what`` (``FAMILY_DEFAULTS`` keys) used with ``base`` when none is named:
    a tiny base's own for a tiny base, else ``family``'s default."""
    if base in TINY_BASES:
        return base
    return FAMILY_DEFAULTS[family][what]


def default_adapter(base: str, family: str = "sdxl") -> str:
    """The IP-Adapter used with ``base`` when none is named (the tiny one for a tiny base)."""
    return str(family_default(base, "adapter", family))


def default_image_encoder(base: str, adapter: str | None = None, family: str = "sdxl") -> str:
    """The image encoder used with ``base`` and ``adapter`` when none is named.

    The adapter decides where it names one: ``tiny-plus``/``tiny-vit-h``/``tiny-sd15-plus`` read the
    tiny ViT-H encoder, an h94 ``*vit-h*`` file (``ip-adapter_sdxl_vit-h``, ``ip-adapter-plus_sdxl_vit-h``) reads
    ``h94/IP-Adapter/models/image_encoder``; otherwise the base family's (a tiny base's own).
    """
    if adapter in TINY_VIT_H_ADAPTERS:
        return TINY_VIT_H
    if adapter and not is_tiny(adapter) and "vit-h" in Path(str(adapter)).name.lower():
        return VIT_H_IMAGE_ENCODER
    return str(family_default(base, "image_encoder", family))


def default_controlnet(kind: str, base: str, family: str = "sdxl") -> str:
    """The ControlNet of a built-in kind (``canny``, ``tile``) for ``base``."""
    return str(family_default(base, kind, family))


@dataclass(frozen=True)
class Source:
    """A parsed model reference."""

    spec: str
    local: Path | None = None
    repo_id: str | None = None
    subpath: str | None = None  # path inside the Hub repository

    @property
    def is_tiny(self) -> bool:
        return is_tiny(self.spec)


def parse_source(spec: str | os.PathLike) -> Source:
    text = str(spec)
    if is_tiny(text):
        return Source(text)
    path = Path(text).expanduser()
    if path.exists() or text.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(text):
        return Source(text, local=path)
    parts = text.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise InstantStyleError(
            f"model reference {text!r} is neither an existing path nor a Hub id like 'owner/repo' "
            "or 'owner/repo/path/in/repo'"
        )
    return Source(text, repo_id="/".join(parts[:2]), subpath="/".join(parts[2:]) or None)


def canonical_id(spec: str) -> str:
    """A stable identifier for a model reference (absolute path for local ones)."""
    src = parse_source(spec)
    return str(src.local.resolve()) if src.local is not None else src.spec


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (also when switched on by ``preflight.go_offline``)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)
