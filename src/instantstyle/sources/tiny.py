"""A tiny, deterministic, random-weight SDXL with the real block topology.

Its images are noise: it exists so that every code path (loaders, block resolution, IP-Adapter
injection, content subtraction, ControlNet, training) runs on a CPU in seconds, offline.

Topology kept from SDXL (see ../shared/research/diffusers_ipadapter.md, "A tiny config that keeps
SDXL block naming"):
- UNet: 3 levels, attention in down_blocks 1-2 and up_blocks 0-1, a cross-attention mid block,
  ``layers_per_block=2``, so ``down_blocks.2.attentions.1`` and ``up_blocks.0.attentions.1`` exist
  and the deepest level has 2 transformer layers per attention module (SDXL has 10);
- two CLIP text encoders whose hidden sizes add up to the UNet's cross-attention width, the second
  with a projection whose width equals the image encoder's projection (as bigG text/vision do);
- a CLIP vision encoder with projection, a ``CLIPImageProcessor``;
- an IP-Adapter state dict in the public h94 key layout (``image_proj.*``, ``ip_adapter.N.to_k_ip``);
- an offline character-level CLIP tokenizer (no Hub access).

``make_tiny(dir)`` writes everything in the standard on-disk layouts so the real loaders are
exercised: ``DIR/sdxl`` (diffusers), ``DIR/IP-Adapter/sdxl_models/{ip-adapter_sdxl.safetensors,
ip-adapter_sdxl.bin, image_encoder/}`` (the h94 repository layout), with the ViT-H pieces beside
them as h94 has them (``sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors``,
``sdxl_models/ip-adapter_sdxl_vit-h.safetensors``, ``models/image_encoder/``; ``sources.tiny_adapters``),
``DIR/controlnet-canny`` and
``DIR/controlnet-tile`` (two tiny SDXL ControlNets in the diffusers layout), and
``DIR/sdxl-single-file`` (one original-layout checkpoint plus its configs; ``write_single_file``),
and the tiny SD1.5 (``sources.tiny_sd15.write_tiny_sd15``: ``DIR/sd15``, ``DIR/IP-Adapter/models``, ...),
and ``DIR/loras`` (user LoRAs in the kohya and diffusers layouts, and one for another family;
``tiny_lora.write_tiny_loras``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

# The adapter generators (generic over the UNet) live with the other adapter kinds, the tokenizer
# every tiny model shares in tiny_parts; both re-exported.
from .tiny_adapters import IP_WEIGHT_STD, random_adapter_state_dict, vision_config
from .tiny_parts import _tokenizer

__all__ = [
    "CLIP_DIM",
    "CROSS_DIM",
    "IP_TOKENS",
    "IP_WEIGHT_STD",
    "TINY_SEED",
    "TinyModels",
    "_tokenizer",
    "build_tiny",
    "make_tiny",
    "random_adapter_state_dict",
    "tiny_controlnet",
    "tiny_unet_config",
    "tiny_vision_config",
    "write_single_file",
]

TINY_SEED = 0
CROSS_DIM = 64  # = text_encoder hidden (32) + text_encoder_2 hidden (32), as 768 + 1280 = 2048 in SDXL
CLIP_DIM = 32  # image/text projection width (1280 for bigG)
IP_TOKENS = 4  # tokens per image of the basic ImageProjection adapter (as ip-adapter_sdxl)


@dataclass
class TinyModels:
    pipe: object  # diffusers.StableDiffusionXLPipeline
    image_encoder: object  # transformers.CLIPVisionModelWithProjection
    feature_extractor: object  # transformers.CLIPImageProcessor
    adapter_state_dict: dict  # {"image_proj": {...}, "ip_adapter": {...}} (h94 layout)


def _text_config(vocab_size: int, hidden: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        hidden_act="gelu",
        projection_dim=CLIP_DIM,
    )


def tiny_unet_config(cross_dim: int = CROSS_DIM) -> dict:
    """UNet2DConditionModel kwargs: SDXL's topology at toy width."""
    return dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + CLIP_DIM,
        cross_attention_dim=cross_dim,
        norm_num_groups=32,
    )


def tiny_vision_config():
    return vision_config(32, CLIP_DIM)


def build_tiny(seed: int = TINY_SEED, text_widths: tuple[int, int] = (32, 32)) -> TinyModels:
    """Build the tiny SDXL, image encoder and IP-Adapter in memory (CPU, float32, seconds).

    ``text_widths`` are the hidden sizes of the two text towers (their sum is the UNet's
    cross-attention width). The single-file variant uses two different widths, as SDXL's 768 and
    1280: diffusers' single-file loader tells CLIP-L from bigG by that width.
    """
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionModelWithProjection,
    )

    from ..images import image_processor

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp))
    tokenizer_2 = tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config(sum(text_widths)))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer), text_widths[0]))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(len(tokenizer), text_widths[1]))
    torch.manual_seed(seed + 4)
    image_encoder = CLIPVisionModelWithProjection(tiny_vision_config())
    feature_extractor = image_processor(224)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )
    for model in (unet, vae, text_encoder, text_encoder_2, image_encoder):
        model.eval()
    adapter = random_adapter_state_dict(unet, seed=seed + 5)
    return TinyModels(pipe, image_encoder, feature_extractor, adapter)


def tiny_controlnet(seed: int = TINY_SEED + 6):
    """A tiny random ControlNet for the tiny UNet (same down blocks and naming, as an SDXL ControlNet).

    Built with ``ControlNetModel.from_unet`` (config only, random weights) on a fresh tiny UNet (never one with an IP-Adapter
    attached, whose config would carry ``encoder_hid_dim_type``). Its zero convolutions are
    re-initialised at random, so unlike a freshly initialised ControlNet it visibly changes the
    output (a real one is trained; zeros would make every ControlNet test vacuous).
    """
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config())
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(16, 32), load_weights_from_unet=False
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        zero_convs = [
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out,
        ]
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
    return controlnet.eval()


def make_tiny(directory: str | Path, seed: int = TINY_SEED) -> dict[str, Path]:
    """Write the tiny model to ``directory`` in the standard layouts; return the paths to use.

    Returns ``{"base": DIR/sdxl, "adapter": .../ip-adapter_sdxl.safetensors,
    "adapter_bin": .../ip-adapter_sdxl.bin, "image_encoder": .../image_encoder,
    "controlnet_canny": DIR/controlnet-canny, "controlnet_tile": DIR/controlnet-tile}``, the
    single-file pieces (``write_single_file``), ``plus_adapter``/``vit_h_adapter``/``vit_h_image_encoder``
    and the tiny SD1.5's (``sd15_*``, ``write_tiny_sd15``).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    models = build_tiny(seed)
    base = directory / "sdxl"
    models.pipe.save_pretrained(base, safe_serialization=True)
    sdxl_models = directory / "IP-Adapter" / "sdxl_models"
    sdxl_models.mkdir(parents=True, exist_ok=True)
    encoder_dir = sdxl_models / "image_encoder"
    models.image_encoder.save_pretrained(encoder_dir, safe_serialization=True)
    flat = {f"image_proj.{k}": v for k, v in models.adapter_state_dict["image_proj"].items()}
    flat.update({f"ip_adapter.{k}": v for k, v in models.adapter_state_dict["ip_adapter"].items()})
    save_file({k: v.contiguous() for k, v in flat.items()}, sdxl_models / "ip-adapter_sdxl.safetensors")
    torch.save(models.adapter_state_dict, sdxl_models / "ip-adapter_sdxl.bin")
    single = write_single_file(directory / "sdxl-single-file", seed)
    from .tiny_adapters import write_tiny_adapters  # the Plus and ViT-H adapters, ViT-H encoder
    from .tiny_sd15 import write_tiny_sd15  # SD1.5, ip-adapter(-plus)_sd15 beside them in IP-Adapter/models

    vit_h = write_tiny_adapters(directory / "IP-Adapter", models.pipe.unet, seed + 10)
    sd15 = write_tiny_sd15(directory)
    from .tiny_lora import write_tiny_loras

    lora_files = write_tiny_loras(directory / "loras", models.pipe)
    tiny_controlnet(seed + 6).save_pretrained(directory / "controlnet-canny", safe_serialization=True)
    tiny_controlnet(seed + 7).save_pretrained(directory / "controlnet-tile", safe_serialization=True)
    (directory / "README.txt").write_text(
        "Tiny random-weight SDXL written by `instantstyle make-tiny`. Its images are noise;\n"
        "it exists for tests and smoke runs. Real use needs the SDXL and IP-Adapter weights.\n"
    )
    return {
        "base": base,
        "adapter": sdxl_models / "ip-adapter_sdxl.safetensors",
        "adapter_bin": sdxl_models / "ip-adapter_sdxl.bin",
        "image_encoder": encoder_dir,
        "controlnet_canny": directory / "controlnet-canny",
        "controlnet_tile": directory / "controlnet-tile",
        **single,
        **vit_h,
        **sd15,
        **lora_files,
    }


def write_single_file(directory: str | Path, seed: int = TINY_SEED) -> dict[str, Path]:
    """A tiny SDXL as one checkpoint in the original (LDM/A1111) key layout, as Civitai finetunes ship.

    ``DIR/tiny-sdxl.safetensors`` holds UNet, VAE and both text towers (``ldm_layout``); ``DIR/config``
    holds only the diffusers configs and tokenizers (no weights), as ``instantstyle download base-config``
    leaves them, for ``from_single_file(config=...)``. Its text towers have
    different widths (16 and 48), as SDXL's, so diffusers tells them apart. Also ``DIR/vae-16ch``:
    a VAE of another family (16 latent channels, as SD3/FLUX), for the bad-input tests.
    """
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from .ldm_layout import pipeline_to_ldm

    directory = Path(directory)
    pipe = build_tiny(seed, text_widths=(16, 48)).pipe
    config = directory / "config"
    pipe.save_pretrained(config, safe_serialization=True)
    for weights in config.glob("*/*.safetensors"):
        weights.unlink()
    save_file(pipeline_to_ldm(pipe), directory / "tiny-sdxl.safetensors")
    torch.manual_seed(seed + 9)
    other = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    other.save_pretrained(directory / "vae-16ch", safe_serialization=True)
    return {
        "single_file": directory / "tiny-sdxl.safetensors",
        "single_file_config": config,
        "vae_other_family": directory / "vae-16ch",
    }
