"""Training on accelerate: IP-Adapters on chosen UNet blocks (``adapter_trainer``) and B-LoRA on
one image (``b_lora``). Imports nothing heavy until used."""

from __future__ import annotations

_EXPORTS = {
    "TrainConfig": ("config", "TrainConfig"),
    "make_config": ("config", "make_config"),
    "train_adapter": ("adapter_trainer", "train_adapter"),
    "AdapterTrainer": ("adapter_trainer", "AdapterTrainer"),
    "TrainResult": ("adapter_trainer", "TrainResult"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'instantstyle.training' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value
