"""InstantStyle toolkit: style-preserving text-to-image generation on SDXL.

The public API is re-exported here lazily, so ``import instantstyle`` imports no torch, no
diffusers and no web framework, and probes no device.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "InstantStyle": ("pipeline", "InstantStyle"),
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

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'instantstyle' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value
