"""Tiny random-weight user LoRAs for the tiny models, in the key layouts real LoRA files use.

- ``kohya_lora(pipe)``: the kohya-ss / A1111 layout that most Civitai SDXL LoRAs ship in: one
  flat ``.safetensors`` with ``lora_unet_<LDM module>`` keys (the UNet's original
  ``input_blocks``/``middle_block``/``output_blocks`` names, dots as underscores, e.g.
  ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight``), each with
  ``.lora_down.weight`` ``[rank, in]``, ``.lora_up.weight`` ``[out, rank]`` and a scalar
  ``.alpha``; text-encoder keys under ``lora_te1_`` (CLIP-L) and ``lora_te2_`` (bigG) with the
  original ``text_model_encoder_layers_N_self_attn_q_proj`` names.
- ``diffusers_lora(pipe)``: the layout diffusers' ``save_lora_weights`` writes
  (``unet.<module>.lora_A.weight`` / ``lora_B.weight``, ``text_encoder.``/``text_encoder_2.``).
- ``sd15_kohya_lora()``: a kohya LoRA made for an SD1.5-shaped tiny UNet (attention in
  ``down_blocks.0``, four levels, one text tower under ``lora_te_``, another cross-attention
  width; diffusers' module names, as kohya's SD1.x trainer writes them), for the mismatch tests.

The weights are random but not small: at scale 1 the LoRA moves the tiny model's output far
beyond the 2/255 tolerance of the equivalence tests (a LoRA whose effect cannot be seen would
make those tests vacuous). The LDM names come from ``ldm_layout.unet_prefixes``.
"""

from __future__ import annotations

from pathlib import Path

import torch

RANK = 4
ALPHA = 2.0  # kohya's network_alpha: the update is scaled by alpha / rank
UP_STD = 0.6  # std of lora_up: large enough that the LoRA visibly changes the tiny model's output
UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k")
UNET_TARGETS += ("attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
SD15_CROSS_DIM = 48  # the SD1.5-shaped UNet's text width (as 768 against SDXL's 2048)


def _linears(model, targets) -> list[tuple[str, torch.nn.Linear]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(targets)
    ]


def _pair(linear: torch.nn.Linear, gen: torch.Generator, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(rank, linear.in_features, generator=gen) / linear.in_features**0.5  # [r, in]
    up = torch.randn(linear.out_features, rank, generator=gen) * UP_STD  # [out, r]
    return down, up


def _text_name(name: str) -> str:
    """The original CLIP module name (transformers 5 drops ``text_model.`` from CLIPTextModel)."""
    return name if name.startswith("text_model.") else f"text_model.{name}"


def kohya_lora(pipe, seed: int = 11, rank: int = RANK, alpha: float = ALPHA) -> dict[str, torch.Tensor]:
    """A kohya-format LoRA for ``pipe``: for SDXL (two text towers) with the UNet's LDM names, as
    kohya's SDXL trainer writes them; for SD1.x (one tower) with diffusers' module names
    (``lora_unet_down_blocks_0_attentions_0_...``), as its SD1.x trainer does."""
    from .ldm_layout import unet_prefixes

    gen = torch.Generator().manual_seed(seed)
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    prefixes = (
        sorted(unet_prefixes(pipe.unet.config).items(), key=lambda kv: -len(kv[0])) if sdxl else [("", "")]
    )
    out: dict[str, torch.Tensor] = {}

    def add(key: str, linear) -> None:
        down, up = _pair(linear, gen, rank)
        out[f"{key}.lora_down.weight"] = down
        out[f"{key}.lora_up.weight"] = up
        out[f"{key}.alpha"] = torch.tensor(float(alpha))

    for name, linear in _linears(pipe.unet, UNET_TARGETS):
        hf, ldm = next((hf, ldm) for hf, ldm in prefixes if not hf or name.startswith(hf + "."))
        add("lora_unet_" + (ldm + name[len(hf) :]).lstrip(".").replace(".", "_"), linear)
    towers = [("lora_te1_", pipe.text_encoder), ("lora_te2_", getattr(pipe, "text_encoder_2", None))]
    if towers[1][1] is None:  # one text tower (SD1.x): kohya names it lora_te_
        towers = [("lora_te_", pipe.text_encoder)]
    for prefix, tower in towers:
        for name, linear in _linears(tower, TEXT_TARGETS):
            add(prefix + _text_name(name).replace(".", "_"), linear)
    return out


def diffusers_lora(pipe, seed: int = 12, rank: int = RANK) -> dict[str, torch.Tensor]:
    """A LoRA in diffusers' own layout (PEFT names, no alphas: the update is scaled by 1)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    parts = [("unet", pipe.unet, UNET_TARGETS), ("text_encoder", pipe.text_encoder, TEXT_TARGETS)]
    parts.append(("text_encoder_2", pipe.text_encoder_2, TEXT_TARGETS))
    for prefix, model, targets in parts:
        for name, linear in _linears(model, targets):
            down, up = _pair(linear, gen, rank)
            module = _text_name(name) if prefix != "unet" else name
            out[f"{prefix}.{module}.lora_A.weight"] = down / rank**0.5
            out[f"{prefix}.{module}.lora_B.weight"] = up / rank**0.5
    return out


def sd15_unet_config() -> dict:
    """An SD1.5-shaped toy UNet: four levels, attention from the first, one text tower's width."""
    return dict(
        sample_size=32,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=4,
        cross_attention_dim=SD15_CROSS_DIM,
        norm_num_groups=32,
    )


def sd15_kohya_lora(seed: int = 13) -> dict[str, torch.Tensor]:
    """A kohya LoRA for an SD1.5-shaped tiny model (its own UNet and one text tower)."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**sd15_unet_config())
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=SD15_CROSS_DIM,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=200,
        )
    )
    return kohya_lora(SimpleNamespace(unet=unet, text_encoder=text, text_encoder_2=None), seed=seed)


def write_tiny_loras(directory: str | Path, pipe) -> dict[str, Path]:
    """``DIR/tiny-lora-kohya.safetensors``, ``DIR/tiny-lora-diffusers.safetensors`` (for ``pipe``,
    the tiny SDXL) and ``DIR/tiny-lora-sd15.safetensors`` (for another family)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "lora_kohya": (directory / "tiny-lora-kohya.safetensors", kohya_lora(pipe)),
        "lora_diffusers": (directory / "tiny-lora-diffusers.safetensors", diffusers_lora(pipe)),
        "lora_sd15": (directory / "tiny-lora-sd15.safetensors", sd15_kohya_lora()),
    }
    for path, state_dict in files.values():
        save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    return {key: path for key, (path, _) in files.items()}
