"""A tiny, deterministic, random-weight Stable Diffusion 1.5 with the real block structure.

Like ``sources.tiny`` (SDXL), its images are noise: it exists so that every SD1.5 code path
(loaders, the SD1.5 block tables, IP-Adapter injection, content subtraction in the ViT-H space,
ControlNet, single files) runs on a CPU in seconds, offline. ``--base tiny-sd15`` everywhere.

Topology kept from SD1.5 (``runwayml/stable-diffusion-v1-5``'s ``unet/config.json``):
- UNet: 4 levels, down = ``CrossAttnDownBlock2D`` x3 + ``DownBlock2D``, up = ``UpBlock2D`` +
  ``CrossAttnUpBlock2D`` x3, a cross-attention mid block, ``layers_per_block=2``, one transformer
  layer per attention module, convolutional ``proj_in``/``proj_out`` (``use_linear_projection``
  off), no addition embeddings: 16 cross-attention processors, as the real model;
- one ``CLIPTextModel`` (CLIP-L in SD1.5) whose width is the UNet's cross-attention width;
- the tiny ViT-H-shaped ``CLIPVisionModelWithProjection`` of ``sources.tiny_adapters`` (its
  projection is narrower than its hidden width, as ViT-H/14's 1024 vs 1280; h94's SD1.5 adapters
  read the same ``models/image_encoder`` as its SDXL ViT-H ones), and the matching ViT-H text tower
  (``CLIPTextModelWithProjection``, same projection width) for content subtraction, as
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` is to ``h94/IP-Adapter/models/image_encoder``;
- an ``ip-adapter_sd15``-layout adapter: a global ``ImageProjection`` to 4 tokens, one
  ``ip_adapter.N`` entry per ``attn2`` processor (16, odd ids), h94 key names;
- an ``ip-adapter-plus_sd15``-layout adapter (``tiny-sd15-plus``): a 16-token Resampler over the ViT-H
  encoder's patch features (``sources.tiny_adapters.random_plus_adapter_state_dict`` on this UNet);
- an SD1.5 VAE (scaling factor 0.18215, SDXL's is 0.13025) and a tiny SD1.5 ControlNet.

``write_tiny_sd15(dir)`` writes it in the standard layouts (see its docstring).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .tiny_adapters import (
    VIT_H_HIDDEN,
    VIT_H_PROJECTION,
    random_adapter_state_dict,
    random_plus_adapter_state_dict,
    save_adapter,
    tiny_vit_h_encoder,
)
from .tiny_parts import _tokenizer

TINY_SD15_SEED = 100
CROSS_DIM = 32  # the CLIPTextModel's hidden width (768 in SD1.5)
VIT_H_DIM = VIT_H_PROJECTION  # the ViT-H projection width, image and text (1024 in ViT-H/14)
VIT_H_SEED = 10  # the shared tiny ViT-H encoder's seed (sources.tiny_adapters, as make-tiny writes it)
IP_TOKENS = 4  # tokens per image of ip-adapter_sd15's ImageProjection
SD15_VAE_SCALING = 0.18215


@dataclass
class TinySD15:
    pipe: object  # diffusers.StableDiffusionPipeline
    image_encoder: object  # transformers.CLIPVisionModelWithProjection (ViT-H-shaped)
    feature_extractor: object  # transformers.CLIPImageProcessor
    adapter_state_dict: dict  # {"image_proj": {...}, "ip_adapter": {...}} (ip-adapter_sd15 layout)
    content_text: object  # transformers.CLIPTextModelWithProjection (the ViT-H text tower)
    content_tokenizer: object
    plus_state_dict: dict  # ip-adapter-plus_sd15 layout: Resampler over the ViT-H patch features


def tiny_sd15_unet_config(cross_dim: int = CROSS_DIM) -> dict:
    """UNet2DConditionModel kwargs: SD1.5's topology at toy width."""
    return dict(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=2,
        transformer_layers_per_block=1,
        use_linear_projection=False,
        cross_attention_dim=cross_dim,
        norm_num_groups=32,
    )


def _text_config(vocab_size: int, hidden: int, projection: int | None = None):
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
        projection_dim=projection or hidden,
    )


def build_tiny_sd15(seed: int = TINY_SD15_SEED) -> TinySD15:
    """Build the tiny SD1.5, its ViT-H-shaped encoder pair and adapter in memory (CPU, float32)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ..images import image_processor

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_sd15_unet_config())
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
        scaling_factor=SD15_VAE_SCALING,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config(len(tokenizer), CROSS_DIM))
    image_encoder = tiny_vit_h_encoder(VIT_H_SEED)
    torch.manual_seed(seed + 4)
    content_text = CLIPTextModelWithProjection(_text_config(len(tokenizer), 32, VIT_H_DIM))
    # SD1.5's own scheduler config (PNDM, scaled_linear betas, steps_offset 1, skip_prk_steps).
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        skip_prk_steps=True,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for model in (unet, vae, text_encoder, image_encoder, content_text):
        model.eval()
    adapter = random_adapter_state_dict(unet, clip_dim=VIT_H_DIM, tokens=IP_TOKENS, seed=seed + 5)
    plus = random_plus_adapter_state_dict(unet, VIT_H_HIDDEN, seed=seed + 7)  # reads the patch features
    return TinySD15(pipe, image_encoder, image_processor(224), adapter, content_text, tokenizer, plus)


def tiny_sd15_controlnet(seed: int = TINY_SD15_SEED + 6):
    """A tiny random SD1.5 ControlNet (``ControlNetModel.from_unet`` on a fresh tiny SD1.5 UNet;
    random zero convolutions, as ``sources.tiny.tiny_controlnet``, so it visibly acts)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_sd15_unet_config())
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(16, 32), load_weights_from_unet=False
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in (
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out,
        ):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
    return controlnet.eval()


def write_tiny_sd15(directory: str | Path, seed: int = TINY_SD15_SEED) -> dict[str, Path]:
    """Write the tiny SD1.5 in the standard layouts; return the paths to use.

    ``DIR/sd15`` (diffusers), ``DIR/IP-Adapter/models/{ip-adapter_sd15,ip-adapter-plus_sd15}.safetensors``
    and ``DIR/IP-Adapter/models/image_encoder/``
    (the h94 repository's layout; the encoder is the shared tiny ViT-H, the same weights
    ``sources.tiny_adapters`` writes there), ``DIR/CLIP-ViT-H-14`` (the ViT-H text tower and its tokenizer, as
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``), ``DIR/controlnet-sd15``, and
    ``DIR/sd15-single-file/{tiny-sd15.safetensors,config/}`` (one original-layout checkpoint and its
    configs without weights, for ``from_single_file(config=...)``).
    """
    from safetensors.torch import save_file

    from .ldm_layout import pipeline_to_ldm

    directory = Path(directory)
    models = build_tiny_sd15(seed)
    base = directory / "sd15"
    models.pipe.save_pretrained(base, safe_serialization=True)
    h94 = directory / "IP-Adapter" / "models"
    h94.mkdir(parents=True, exist_ok=True)
    models.image_encoder.save_pretrained(h94 / "image_encoder", safe_serialization=True)
    flat = {f"image_proj.{k}": v for k, v in models.adapter_state_dict["image_proj"].items()}
    flat.update({f"ip_adapter.{k}": v for k, v in models.adapter_state_dict["ip_adapter"].items()})
    save_file({k: v.contiguous() for k, v in flat.items()}, h94 / "ip-adapter_sd15.safetensors")
    save_adapter(models.plus_state_dict, h94 / "ip-adapter-plus_sd15.safetensors")
    text = directory / "CLIP-ViT-H-14"
    models.content_text.save_pretrained(text, safe_serialization=True)
    models.content_tokenizer.save_pretrained(text)
    tiny_sd15_controlnet(seed + 6).save_pretrained(directory / "controlnet-sd15", safe_serialization=True)
    single = directory / "sd15-single-file"
    config = single / "config"
    models.pipe.save_pretrained(config, safe_serialization=True)
    for weights in config.glob("*/*.safetensors"):
        weights.unlink()
    save_file(pipeline_to_ldm(models.pipe), single / "tiny-sd15.safetensors")
    return {
        "sd15_base": base,
        "sd15_adapter": h94 / "ip-adapter_sd15.safetensors",
        "sd15_plus_adapter": h94 / "ip-adapter-plus_sd15.safetensors",
        "sd15_image_encoder": h94 / "image_encoder",
        "sd15_content_text": text,
        "sd15_controlnet": directory / "controlnet-sd15",
        "sd15_single_file": single / "tiny-sd15.safetensors",
        "sd15_single_file_config": config,
    }
