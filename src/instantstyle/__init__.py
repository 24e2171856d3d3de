"""InstantStyle toolkit: style-preserving text-to-image generation on SDXL.

The public API is re-exported here lazily, so ``import instantstyle`` imports no torch, no
diffusers and no web framework, and probes no device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "InstantStyle": ("model", "InstantStyle"),
    "GenerateRequest": ("config", "GenerateRequest"),
    "InstantStyleError": ("errors", "InstantStyleError"),
    "ModelNotFoundError": ("errors", "ModelNotFoundError"),
    "Style": ("embeddings", "Style"),
    "save_style": ("embeddings", "save_style"),
    "load_style": ("embeddings", "load_style"),
    "combine_styles": ("embeddings", "combine_styles"),
    "subtract_content": ("embeddings", "subtract_content"),
    "save_png": ("images", "save_png"),
    "read_metadata": ("images", "read_metadata"),
    "PRESETS": ("blocks", "PRESETS"),
}

__all__ = [  # the names of _EXPORTS (tests/unit/test_public_api.py keeps them equal)
    "__version__",
    "InstantStyle",
    "GenerateRequest",
    "InstantStyleError",
    "ModelNotFoundError",
    "Style",
    "save_style",
    "load_style",
    "combine_styles",
    "subtract_content",
    "save_png",
    "read_metadata",
    "PRESETS",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on first use
    from .blocks import PRESETS as PRESETS
    from .config import GenerateRequest as GenerateRequest
    from .embeddings import Style as Style
    from .embeddings import combine_styles as combine_styles
    from .embeddings import load_style as load_style
    from .embeddings import save_style as save_style
    from .embeddings import subtract_content as subtract_content
    from .errors import InstantStyleError as InstantStyleError
    from .errors import ModelNotFoundError as ModelNotFoundError
    from .images import read_metadata as read_metadata
    from .images import save_png as save_png
    from .model import InstantStyle as InstantStyle


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'instantstyle' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value
