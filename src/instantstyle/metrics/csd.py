"""Style similarity (``csd_style``) and its content view (``csd_content``): CSD.

CSD, "Measuring Style Similarity in Diffusion Models" (Somepalli et al., arXiv 2404.01292; code
github.com/learn2phoenix/CSD, MIT; weights ``tomg-group-umd/CSD-ViT-L``, CC-BY-4.0). The model is
OpenAI's CLIP ViT-L/14 vision transformer without its contrastive projection, whose pooled output
(``ln_post`` of the class token, 1024-d) feeds two learned ``[1024, 768]`` matrices: a style head
and a content head. Each output is L2-normalised; a score is the cosine between an output image's
vector and the style reference's (Sec. 4 of the paper; the InstantStyle-Plus code prints both).

Re-implemented here on transformers' ``CLIPVisionModel`` (no ``clip``/``open_clip`` dependency):
the published file is a training checkpoint (``{"model_state_dict": {"module.backbone.conv1.weight",
..., "module.last_layer_style", "module.last_layer_content"}, "args": Namespace, ...}``) in OpenAI
CLIP's key layout, which ``openai_to_transformers`` maps key by key (the fused ``in_proj`` of each
attention is split into q/k/v). Every key is checked: a missing, renamed or extra key is a one-line
error. The file is read with ``torch.load(weights_only=True)`` and an allow-list of the few
non-tensor types a training checkpoint holds (``argparse.Namespace``, numpy scalars), so no pickled
code runs. Preprocessing is the authors': bicubic resize of the short side to 224, centre crop,
CLIP's mean and std.
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
from pathlib import Path

import torch
from torch import nn

from .. import models
from ..errors import InstantStyleError
from .loading import key_mismatch

DEFAULT_CSD = "tomg-group-umd/CSD-ViT-L/pytorch_model.bin"
HEAD_WIDTH = 64  # OpenAI CLIP's ViTs: heads = width // 64 (16 heads for ViT-L's 1024)
_LAYER_KEYS = (
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_1.weight",
    "ln_1.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
)
_STEM_KEYS = (
    "conv1.weight",
    "class_embedding",
    "positional_embedding",
    "ln_pre.weight",
    "ln_pre.bias",
    "ln_post.weight",
    "ln_post.bias",
)
HEADS = ("last_layer_style", "last_layer_content")


class CSD(nn.Module):
    """CLIP vision transformer (no projection) + style and content heads; ``forward -> (style, content)``."""

    def __init__(self, vision_config, embed_dim: int = 768):
        super().__init__()
        from transformers import CLIPVisionModel

        self.backbone = CLIPVisionModel(vision_config)
        width = vision_config.hidden_size
        self.style_head = nn.Parameter(torch.zeros(width, embed_dim))  # last_layer_style, [in, out]
        self.content_head = nn.Parameter(torch.zeros(width, embed_dim))  # last_layer_content

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.backbone(pixel_values=pixel_values).pooler_output  # [N, W]: ln_post(class token)
        style = nn.functional.normalize(feature @ self.style_head.to(feature.dtype), dim=-1)  # [N, E]
        content = nn.functional.normalize(feature @ self.content_head.to(feature.dtype), dim=-1)  # [N, E]
        return style, content


def expected_keys(layers: int) -> set[str]:
    """The keys of a CSD checkpoint with ``layers`` transformer blocks (after stripping ``module.``)."""
    keys = {f"backbone.{k}" for k in _STEM_KEYS} | set(HEADS)
    keys |= {f"backbone.transformer.resblocks.{i}.{k}" for i in range(layers) for k in _LAYER_KEYS}
    return keys


def vision_config_from(state: dict[str, torch.Tensor]):
    """The ``CLIPVisionConfig`` a CSD state dict (OpenAI layout, ``module.`` stripped) was trained with."""
    from transformers import CLIPVisionConfig

    conv = state["backbone.conv1.weight"]  # [W, 3, P, P]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(state["backbone.positional_embedding"].shape[0] - 1)
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=state["backbone.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_n_layers(state),
        num_attention_heads=max(1, width // HEAD_WIDTH),
        num_channels=conv.shape[1],
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def _n_layers(state: dict) -> int:
    ids = {int(m.group(1)) for k in state if (m := re.match(r"backbone\.transformer\.resblocks\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def key_map(layers: int, inner: str = "") -> list[tuple[str, str, int | None]]:
    """``[(checkpoint key, CSD key, chunk)]``: where each OpenAI-layout tensor goes in ``CSD``.

    ``chunk`` 0/1/2 takes the q/k/v third of a fused ``in_proj`` tensor; ``None`` takes it whole.
    ``inner`` is ``"vision_model."`` for transformers 4 (whose ``CLIPVisionModel`` wraps a
    ``vision_model``) and ``""`` for transformers 5.
    """
    v = "backbone." + inner
    out = [("last_layer_style", "style_head", None), ("last_layer_content", "content_head", None)]
    stem = {
        "conv1.weight": "embeddings.patch_embedding.weight",
        "class_embedding": "embeddings.class_embedding",
        "positional_embedding": "embeddings.position_embedding.weight",
        "ln_pre.weight": "pre_layrnorm.weight",
        "ln_pre.bias": "pre_layrnorm.bias",
        "ln_post.weight": "post_layernorm.weight",
        "ln_post.bias": "post_layernorm.bias",
    }
    out += [(f"backbone.{ours}", v + theirs, None) for ours, theirs in stem.items()]
    rename = {
        "attn.out_proj": "self_attn.out_proj",
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for i in range(layers):
        src, dst = f"backbone.transformer.resblocks.{i}.", f"{v}encoder.layers.{i}."
        for part in ("weight", "bias"):
            out += [
                (f"{src}attn.in_proj_{part}", f"{dst}self_attn.{n}_proj.{part}", j)
                for j, n in enumerate("qkv")
            ]
            out += [(f"{src}{ours}.{part}", f"{dst}{theirs}.{part}", None) for ours, theirs in rename.items()]
    return out


def openai_to_transformers(state: dict[str, torch.Tensor], inner: str = "") -> dict[str, torch.Tensor]:
    """The OpenAI-layout state dict as ``CSD``'s (the fused ``in_proj`` of each attention split into q/k/v)."""
    out = {}
    for src, dst, chunk in key_map(_n_layers(state), inner):
        out[dst] = state[src] if chunk is None else state[src].chunk(3, dim=0)[chunk]  # [3W, ...] -> [W, ...]
    return out


def _safe_globals() -> list:
    """The non-tensor types of a CSD training checkpoint: its argparse namespace and numpy scalars."""
    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed = [
        argparse.Namespace,
        np.dtype,
        multiarray.scalar,
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
    ]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(getattr(np, "dtypes", None), name):
            allowed.append(getattr(np.dtypes, name))
    return allowed


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a CSD checkpoint (``model_state_dict`` or a bare state dict), ``module.`` stripped."""
    path = Path(path)

    def load(**kw):
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True, **kw)

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            try:
                raw = load(mmap=True)  # the optimiser state, if any, stays on disk
            except RuntimeError:
                raw = load()  # a legacy (non-zip) file cannot be memory-mapped
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InstantStyleError(
            f"CSD checkpoint '{path}' could not be read safely ({type(exc).__name__}: "
            f"{first[:200]}); is it the published pytorch_model.bin?"
        ) from None
    state = raw.get("model_state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InstantStyleError(f"CSD checkpoint '{path}' holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def build(state: dict[str, torch.Tensor], where: str = "CSD") -> CSD:
    """A ``CSD`` with the weights of an OpenAI-layout state dict, every key and shape checked."""
    layers = _n_layers(state)
    expected = expected_keys(layers)
    if set(state) != expected:
        raise key_mismatch("CSD checkpoint", where, expected - set(state), set(state) - expected)
    config = vision_config_from(state)
    model = CSD(config, embed_dim=state["last_layer_style"].shape[1])
    inner = (
        "vision_model." if "vision_model.embeddings.class_embedding" in model.backbone.state_dict() else ""
    )
    own = model.state_dict()
    converted = openai_to_transformers(state, inner)
    wrong = sorted({src for src, dst, _ in key_map(layers, inner) if converted[dst].shape != own[dst].shape})
    if wrong:
        raise key_mismatch("CSD checkpoint", where, (), (), wrong)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def load(spec: str = DEFAULT_CSD, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """``(CSD model, image processor)`` from a local file or ``owner/repo/path/to/pytorch_model.bin``."""
    if spec == models.TINY:
        from ..sources.tiny_metrics import tiny_metric_paths

        spec = str(tiny_metric_paths()["csd"])
    path = models.resolve_file(spec, "CSD checkpoint")
    model = build(read_checkpoint(path), spec).to(device, dtype)
    return model, models.image_processor(model.backbone.config.image_size)


@torch.no_grad()
def embed(model: CSD, processor, images) -> tuple[torch.Tensor, torch.Tensor]:
    """``(style [N, E], content [N, E])`` unit vectors (float32, CPU) of PIL images."""
    param = next(model.parameters())
    pixels = processor(images=list(images), return_tensors="pt").pixel_values.to(param.device, param.dtype)
    style, content = model(pixels)
    return style.float().cpu(), content.float().cpu()
