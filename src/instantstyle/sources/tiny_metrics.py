"""Tiny random-weight metric models in the published checkpoint layouts (tests and smoke runs).

- CSD: a ``pytorch_model.bin`` shaped like ``tomg-group-umd/CSD-ViT-L``'s: a training checkpoint
  ``{"model_state_dict": {"module.backbone.<OpenAI CLIP visual keys>", "module.last_layer_style",
  "module.last_layer_content"}, "args": argparse.Namespace, "epoch", "best_acc": numpy scalar}``,
  at toy width (128, 2 heads, 2 layers, 14 px patches, 224 px);
- CLIP: a ``CLIPModel`` directory (``openai/clip-vit-large-patch14``'s layout) with the offline
  character-level tokenizer of ``sources.tiny``;
- DINOv2: a ``Dinov2Model`` directory (``facebook/dinov2-base``'s layout).

Their scores mean nothing; they exist so every metric code path runs offline on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

CSD_WIDTH, CSD_LAYERS, CSD_EMBED = 128, 2, 16
_TMP: dict[str, object] = {}


def tiny_csd_state_dict(
    seed: int = 0,
    width: int = CSD_WIDTH,
    layers: int = CSD_LAYERS,
    patch: int = 14,
    image_size: int = 224,
    embed_dim: int = CSD_EMBED,
) -> dict[str, torch.Tensor]:
    """Random weights with exactly the keys of the published CSD checkpoint (``module.`` prefixed)."""
    gen = torch.Generator().manual_seed(seed)

    def lin(*shape, fan_in):
        return torch.randn(*shape, generator=gen) / fan_in**0.5

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=gen), 0.1 * torch.randn(n, generator=gen)

    tokens = (image_size // patch) ** 2 + 1
    sd = {
        "backbone.conv1.weight": lin(width, 3, patch, patch, fan_in=3 * patch * patch),
        "backbone.class_embedding": lin(width, fan_in=width),
        "backbone.positional_embedding": lin(tokens, width, fan_in=width),
    }
    for name in ("ln_pre", "ln_post"):
        sd[f"backbone.{name}.weight"], sd[f"backbone.{name}.bias"] = norm(width)
    for i in range(layers):
        p = f"backbone.transformer.resblocks.{i}."
        sd[p + "attn.in_proj_weight"] = lin(3 * width, width, fan_in=width)
        sd[p + "attn.in_proj_bias"] = 0.1 * torch.randn(3 * width, generator=gen)
        sd[p + "attn.out_proj.weight"] = lin(width, width, fan_in=width)
        sd[p + "attn.out_proj.bias"] = 0.1 * torch.randn(width, generator=gen)
        sd[p + "ln_1.weight"], sd[p + "ln_1.bias"] = norm(width)
        sd[p + "mlp.c_fc.weight"] = lin(4 * width, width, fan_in=width)
        sd[p + "mlp.c_fc.bias"] = 0.1 * torch.randn(4 * width, generator=gen)
        sd[p + "mlp.c_proj.weight"] = lin(width, 4 * width, fan_in=4 * width)
        sd[p + "mlp.c_proj.bias"] = 0.1 * torch.randn(width, generator=gen)
        sd[p + "ln_2.weight"], sd[p + "ln_2.bias"] = norm(width)
    sd["last_layer_style"] = lin(width, embed_dim, fan_in=width)
    sd["last_layer_content"] = lin(width, embed_dim, fan_in=width)
    return {f"module.{k}": v for k, v in sd.items()}


def write_tiny_csd(path: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Save a CSD training checkpoint (the published file's structure) to ``path``."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "model_state_dict": state if state is not None else tiny_csd_state_dict(),
        "args": argparse.Namespace(arch="vit_large", lam=0.0),
        "epoch": 0,
        "best_acc": np.float64(0.5),
    }
    torch.save(checkpoint, path)
    return path


def tiny_clip(seed: int = 0):
    """``(CLIPModel, CLIPTokenizer)`` at toy width, the tokenizer offline (``sources.tiny``'s)."""
    from transformers import CLIPConfig, CLIPModel

    from .tiny import _text_config, _tokenizer, tiny_vision_config

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp))
    text = _text_config(vocab_size=len(tokenizer)).to_dict()
    vision = tiny_vision_config().to_dict()
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    return model, tokenizer


def tiny_dino(seed: int = 0):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=224, patch_size=14
    )
    return Dinov2Model(config).eval()


def make_tiny_metrics(directory: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the three tiny metric models; returns ``{"csd": file, "clip": dir, "dino": dir}``."""
    directory = Path(directory)
    csd = write_tiny_csd(directory / "CSD-ViT-L" / "pytorch_model.bin", tiny_csd_state_dict(seed))
    clip, tokenizer = tiny_clip(seed + 1)
    clip.save_pretrained(directory / "clip", safe_serialization=True)
    tokenizer.save_pretrained(directory / "clip")
    tiny_dino(seed + 2).save_pretrained(directory / "dinov2", safe_serialization=True)
    return {"csd": csd, "clip": directory / "clip", "dino": directory / "dinov2"}


def tiny_metric_paths() -> dict[str, Path]:
    """The tiny metric models written once per process to a temporary directory (``tiny`` references)."""
    if "paths" not in _TMP:
        _TMP["dir"] = tempfile.TemporaryDirectory(prefix="instantstyle-tiny-metrics-")
        _TMP["paths"] = make_tiny_metrics(_TMP["dir"].name)
    return _TMP["paths"]
