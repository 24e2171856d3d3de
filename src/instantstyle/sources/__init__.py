"""Model references: one string says where a model comes from (see ``instantstyle.models``).

- ``tiny``: the built-in random-weight test model, a source like any other: ``--base tiny``
  implies the tiny adapter, image encoder and ControlNets (``default_adapter``,
  ``default_image_encoder``, ``default_controlnet``);
- ``tiny-plus`` / ``tiny-vit-h`` (``--adapter``): the tiny IP-Adapter Plus and global ViT-H adapter;
  either implies ``--image-encoder tiny-vit-h``, the tiny ViT-H-shaped encoder (``sources.tiny_adapters``);
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
TINY_REFS = (TINY, TINY_PLUS, TINY_VIT_H)  # every built-in tiny reference
# The image encoder each h94 adapter file reads (the *_vit-h files: OpenCLIP ViT-H/14).
VIT_H_IMAGE_ENCODER = "h94/IP-Adapter/models/image_encoder"


def default_adapter(base: str) -> str:
    """The IP-Adapter used with ``base`` when none is named (the tiny one for the tiny base)."""
    return TINY if base == TINY else DEFAULT_ADAPTER


def default_image_encoder(base: str, adapter: str | None = None) -> str:
    """The image encoder used with ``base`` and ``adapter`` when none is named.

    The adapter decides where it names one: ``tiny-plus``/``tiny-vit-h`` read the tiny ViT-H encoder,
    an h94 ``*vit-h*`` file (``ip-adapter_sdxl_vit-h``, ``ip-adapter-plus_sdxl_vit-h``) reads
    ``h94/IP-Adapter/models/image_encoder``; otherwise the base's (the tiny one for the tiny base).
    """
    if adapter in (TINY_PLUS, TINY_VIT_H):
        return TINY_VIT_H
    if adapter and adapter != TINY and "vit-h" in Path(str(adapter)).name.lower():
        return VIT_H_IMAGE_ENCODER
    return TINY if base == TINY else DEFAULT_IMAGE_ENCODER


def default_controlnet(kind: str, base: str) -> str:
    """The ControlNet of a built-in kind (``canny``, ``tile``) for ``base``."""
    if base == TINY:
        return TINY
    return {"canny": DEFAULT_CONTROLNET_CANNY, "tile": DEFAULT_CONTROLNET_TILE}[kind]


@dataclass(frozen=True)
class Source:
    """A parsed model reference."""

    spec: str
    local: Path | None = None
    repo_id: str | None = None
    subpath: str | None = None  # path inside the Hub repository

    @property
    def is_tiny(self) -> bool:
        return self.spec in TINY_REFS


def parse_source(spec: str | os.PathLike) -> Source:
    text = str(spec)
    if text in TINY_REFS:
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
