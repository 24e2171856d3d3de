"""Tiny random-weight IP-Adapters of the other kinds, and the ViT-H-shaped image encoder they read.

- ``tiny_vit_h_encoder()``: a ``CLIPVisionModelWithProjection`` shaped like OpenCLIP ViT-H/14 where
  it matters here: 224 px, 14 px patches (257 hidden states per image), a hidden size (48) and a
  projection (24) that both differ from the tiny bigG encoder's (32, 32), as ViT-H's 1280/1024 differ
  from bigG's 1664/1280. So every ViT-H / bigG and hidden-size / projection mix-up fails on the tiny
  models as it does on the real ones.
- ``random_plus_adapter_state_dict(unet, embed_dim)``: an IP-Adapter Plus in the h94 layout
  (``ip-adapter-plus_sdxl_vit-h.safetensors``): the Resampler (``image_proj.latents``, ``proj_in``,
  ``proj_out``, ``norm_out``, ``layers.N.0.{norm1,norm2,to_q,to_kv,to_out}`` perceiver attention,
  ``layers.N.1.{0,1,3}`` feed-forward) over ``embed_dim``-wide patch features, and
  ``ip_adapter.K.to_k_ip/to_v_ip`` for every ``attn2`` of ``unet``. Generic over the UNet (its
  cross-attention width and processors) and the encoder (``embed_dim`` = its hidden size), so the same
  function makes ``ip-adapter-plus_sd15`` for an SD1.5 UNet.
- ``random_adapter_state_dict(unet, clip_dim)``: a global adapter (ImageProjection, ``ip-adapter_sdxl``
  layout); ``tiny_vit_h_adapter_state_dict(unet)`` is the ViT-H one (``ip-adapter_sdxl_vit-h``: from the
  24-d projected embedding).

diffusers 0.42 builds the Resampler with 4 layers and 64-wide heads (``heads = to_q rows // 64``;
``_convert_ip_adapter_image_proj_to_diffusers``), so the tiny one has depth 4 and one 64-wide head.

``write_tiny_adapters(dir, unet)`` writes them in the h94 repository layout (``make-tiny``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

VIT_H_HIDDEN = 48  # the tiny ViT-H's hidden size (1280 for ViT-H/14): what a Plus adapter reads
VIT_H_PROJECTION = 24  # its projection width (1024 for ViT-H/14): what a global ViT-H adapter reads
PLUS_TOKENS = 16  # tokens per image of ip-adapter-plus_sdxl_vit-h
PLUS_WIDTH = 32  # the Resampler's inner width (1280 in h94's file)
PLUS_DEPTH = 4  # diffusers builds 4 layers
PLUS_HEAD_DIM = 64  # diffusers builds 64-wide heads
FF_MULT = 4
# Std of the random to_k_ip/to_v_ip weights: large enough that injecting a different style image
# changes the tiny model's output far more than the 2/255 tolerance of the equivalence tests.
IP_WEIGHT_STD = 1.0


@dataclass
class TinyAdapters:
    vit_h_encoder: object  # transformers.CLIPVisionModelWithProjection
    plus_state_dict: dict  # {"image_proj": {...}, "ip_adapter": {...}}, h94 Plus layout
    vit_h_state_dict: dict  # h94 ImageProjection layout, from the ViT-H projection


def random_adapter_state_dict(
    unet, clip_dim: int = 32, tokens: int = 4, seed: int = 1
) -> dict:  # tiny bigG widths
    """A random IP-Adapter in the h94 layout for ``unet``.

    ``ip_adapter`` keys are numbered by each processor's index in ``unet.attn_processors`` (the
    original ``ModuleList(unet.attn_processors.values())`` save format), so cross-attention
    processors take the odd ids.
    """
    gen = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    image_proj = {
        "proj.weight": torch.randn(tokens * cross, clip_dim, generator=gen) / clip_dim**0.5,
        "proj.bias": torch.randn(tokens * cross, generator=gen) * 0.1,
        "norm.weight": 1.0 + 0.1 * torch.randn(cross, generator=gen),
        "norm.bias": 0.1 * torch.randn(cross, generator=gen),
    }
    ip_adapter = {}
    for idx, name in enumerate(unet.attn_processors):
        if not name.endswith("attn2.processor"):
            continue
        attn = unet.get_submodule(name[: -len(".processor")])
        hidden = attn.to_k.out_features
        for key in ("to_k_ip", "to_v_ip"):
            ip_adapter[f"{idx}.{key}.weight"] = torch.randn(hidden, cross, generator=gen) * IP_WEIGHT_STD
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def vision_config(hidden_size: int, projection_dim: int):
    """A tiny CLIP vision tower at 224 px, patch 14 (257 tokens, as ViT-H/14 and ViT-bigG/14)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        num_channels=3,
        image_size=224,
        patch_size=14,
        projection_dim=projection_dim,
    )


def tiny_vit_h_config():
    return vision_config(VIT_H_HIDDEN, VIT_H_PROJECTION)


def tiny_vit_h_encoder(seed: int = 10):
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(tiny_vit_h_config()).eval()


def _linear(gen: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=gen) / cols**0.5


def _norm(gen: torch.Generator, prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": 1.0 + 0.1 * torch.randn(width, generator=gen),
        f"{prefix}.bias": 0.1 * torch.randn(width, generator=gen),
    }


def random_resampler(
    embed_dim: int,
    cross_dim: int,
    tokens: int = PLUS_TOKENS,
    width: int = PLUS_WIDTH,
    heads: int = 1,
    depth: int = PLUS_DEPTH,
    seed: int = 11,
) -> dict[str, torch.Tensor]:
    """A random Resampler (``image_proj.*`` of an IP-Adapter Plus file) in the h94 key layout.

    ``embed_dim``: the encoder's hidden size (patch-feature width); ``cross_dim``: the UNet's
    cross-attention width (the tokens it makes); ``tokens``: learned queries = tokens per image.
    """
    gen = torch.Generator().manual_seed(seed)
    inner = heads * PLUS_HEAD_DIM
    sd = {
        "latents": torch.randn(1, tokens, width, generator=gen) / width**0.5,  # [1, T, W]
        "proj_in.weight": _linear(gen, width, embed_dim),
        "proj_in.bias": 0.1 * torch.randn(width, generator=gen),
        "proj_out.weight": _linear(gen, cross_dim, width),
        "proj_out.bias": 0.1 * torch.randn(cross_dim, generator=gen),
        **_norm(gen, "norm_out", cross_dim),
    }
    for i in range(depth):
        attn, ff = f"layers.{i}.0", f"layers.{i}.1"
        sd.update(_norm(gen, f"{attn}.norm1", width))  # LayerNorm of the patch features
        sd.update(_norm(gen, f"{attn}.norm2", width))  # LayerNorm of the latents
        sd[f"{attn}.to_q.weight"] = _linear(gen, inner, width)
        sd[f"{attn}.to_kv.weight"] = _linear(gen, 2 * inner, width)
        sd[f"{attn}.to_out.weight"] = _linear(gen, width, inner)
        sd.update(_norm(gen, f"{ff}.0", width))  # feed-forward: LayerNorm, Linear, GELU, Linear
        sd[f"{ff}.1.weight"] = _linear(gen, FF_MULT * width, width)
        sd[f"{ff}.3.weight"] = _linear(gen, width, FF_MULT * width)
    return sd


def random_plus_adapter_state_dict(
    unet, embed_dim: int, tokens: int = PLUS_TOKENS, width: int = PLUS_WIDTH, seed: int = 11
) -> dict:
    """A random IP-Adapter Plus for ``unet`` reading ``embed_dim``-wide patch features (h94 layout)."""
    cross = unet.config.cross_attention_dim
    # The per-layer to_k_ip/to_v_ip are laid out as for the basic adapter: only the projection differs.
    ip_adapter = random_adapter_state_dict(unet, clip_dim=1, tokens=1, seed=seed + 1)["ip_adapter"]
    image_proj = random_resampler(embed_dim, cross, tokens=tokens, width=width, seed=seed)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def tiny_vit_h_adapter_state_dict(unet, seed: int = 13) -> dict:
    """The global ViT-H adapter (``ip-adapter_sdxl_vit-h``): 4 tokens from the 24-d projection."""
    return random_adapter_state_dict(unet, clip_dim=VIT_H_PROJECTION, seed=seed)


def build_tiny_adapters(unet, seed: int = 10) -> TinyAdapters:
    """The tiny ViT-H encoder and both ViT-H adapters for ``unet`` (CPU, float32, deterministic)."""
    return TinyAdapters(
        tiny_vit_h_encoder(seed),
        random_plus_adapter_state_dict(unet, VIT_H_HIDDEN, seed=seed + 1),
        tiny_vit_h_adapter_state_dict(unet, seed=seed + 3),
    )


def save_adapter(state_dict: dict, path: Path) -> Path:
    """An adapter state dict as one ``.safetensors`` file with flat ``image_proj.*``/``ip_adapter.*`` keys."""
    from safetensors.torch import save_file

    flat = {
        f"{part}.{k}": v.contiguous()
        for part in ("image_proj", "ip_adapter")
        for k, v in state_dict[part].items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(path))
    return path


def write_tiny_adapters(ip_adapter_dir: str | Path, unet, seed: int = 10) -> dict[str, Path]:
    """Write them as h94/IP-Adapter lays them out: ``sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors``,
    ``sdxl_models/ip-adapter_sdxl_vit-h.safetensors`` and the ViT-H encoder in ``models/image_encoder``."""
    root = Path(ip_adapter_dir)
    made = build_tiny_adapters(unet, seed)
    encoder_dir = root / "models" / "image_encoder"
    made.vit_h_encoder.save_pretrained(encoder_dir, safe_serialization=True)
    return {
        "plus_adapter": save_adapter(
            made.plus_state_dict, root / "sdxl_models" / "ip-adapter-plus_sdxl_vit-h.safetensors"
        ),
        "vit_h_adapter": save_adapter(
            made.vit_h_state_dict, root / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors"
        ),
        "vit_h_image_encoder": encoder_dir,
    }
