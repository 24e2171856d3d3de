"""Full-size SDXL with random weights, built directly on a device: for speed and memory numbers.

Cost does not depend on the weights, so a random-weight SDXL (UNet 2.57 B parameters, CLIP ViT-L
and bigG text encoders, the SDXL VAE, the ViT-bigG image encoder and an IP-Adapter in the
``ip-adapter_sdxl`` h94 layout) costs exactly the time and memory the real one does. Nothing is
downloaded. The configs are SDXL base 1.0's and h94's (see
../shared/research/diffusers_ipadapter.md, section 6).
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

# stabilityai/stable-diffusion-xl-base-1.0/unet/config.json
SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
    norm_eps=1e-5,
)
IMAGE_ENCODER_DIM = 1280  # ViT-bigG projection, the input of ip-adapter_sdxl's image projection


@contextlib.contextmanager
def on_device(device: torch.device | str, dtype: torch.dtype):
    """Create modules directly on ``device`` in ``dtype`` (no float32 CPU copy first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


@dataclass
class FullModels:
    pipe: object  # StableDiffusionXLPipeline (no adapter attached yet)
    image_encoder: object
    feature_extractor: object
    adapter_state_dict: dict
    controlnet: object | None = None


def build_full_sdxl(
    device: torch.device | str,
    dtype: torch.dtype = torch.float16,
    *,
    controlnet: bool = False,
    image_encoder: bool = True,
    text_encoders: bool = True,
) -> FullModels:
    """SDXL base parts (+ optionally a ControlNet from the UNet's config) with random weights on ``device``."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from ..images import image_processor
    from .tiny import _tokenizer

    device = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp))  # offline; cost is per token, not per vocabulary entry
    with on_device(device, dtype):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        cnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False) if controlnet else None
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            sample_size=1024,
            layers_per_block=2,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.13025,
            force_upcast=True,
        )
        text_encoder = text_encoder_2 = encoder = None
        common = dict(
            vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1
        )
        if text_encoders:
            text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    hidden_size=768,
                    intermediate_size=3072,
                    num_hidden_layers=12,
                    num_attention_heads=12,
                    hidden_act="quick_gelu",
                    projection_dim=768,
                    **common,
                )
            )
            text_encoder_2 = CLIPTextModelWithProjection(
                CLIPTextConfig(
                    hidden_size=1280,
                    intermediate_size=5120,
                    num_hidden_layers=32,
                    num_attention_heads=20,
                    hidden_act="gelu",
                    projection_dim=1280,
                    **common,
                )
            )
        if image_encoder:
            encoder = CLIPVisionModelWithProjection(
                CLIPVisionConfig(
                    hidden_size=1664,
                    intermediate_size=8192,
                    num_hidden_layers=48,
                    num_attention_heads=16,
                    patch_size=14,
                    image_size=224,
                    projection_dim=IMAGE_ENCODER_DIM,
                    hidden_act="gelu",
                    layer_norm_eps=1e-5,
                )
            )
    for m in (unet, cnet, vae, text_encoder, text_encoder_2, encoder):
        if m is not None:
            m.eval().requires_grad_(False)
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
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )
    return FullModels(pipe, encoder, image_processor(224), random_adapter(unet, device, dtype), cnet)


@torch.no_grad()
def random_adapter(unet, device, dtype, clip_dim: int = IMAGE_ENCODER_DIM, tokens: int = 4) -> dict:
    """ip-adapter_sdxl's h94 layout (proj 1280 -> 4 x 2048, one to_k_ip/to_v_ip pair per attn2), random."""
    cross = unet.config.cross_attention_dim
    g = torch.Generator(device).manual_seed(5)

    def rnd(*shape, std):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * std).to(dtype)

    image_proj = {
        "proj.weight": rnd(tokens * cross, clip_dim, std=clip_dim**-0.5),
        "proj.bias": rnd(tokens * cross, std=0.1),
        "norm.weight": 1 + rnd(cross, std=0.1),
        "norm.bias": rnd(cross, std=0.1),
    }
    ip_adapter = {}
    for idx, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            hidden = unet.get_submodule(name[: -len(".processor")]).to_k.out_features
            for key in ("to_k_ip", "to_v_ip"):
                ip_adapter[f"{idx}.{key}.weight"] = rnd(hidden, cross, std=cross**-0.5)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def full_instantstyle(
    device: torch.device | str = "cuda",
    dtype: torch.dtype = torch.float16,
    *,
    controlnet: bool = False,
    speed="auto",
):
    """``(InstantStyle, controlnet or None)`` on full-size random SDXL, everything on ``device``."""
    from .. import adapter as adapter_mod
    from ..embeddings import EmbeddingCache
    from ..model import InstantStyle

    full = build_full_sdxl(device, dtype, controlnet=controlnet)
    info = adapter_mod.inspect(full.adapter_state_dict)
    adapter_mod.attach(full.pipe, [full.adapter_state_dict], full.image_encoder, full.feature_extractor)
    full.pipe.to(device)
    full.pipe.set_progress_bar_config(disable=True)
    ids = {"base": "random-sdxl", "adapter": "random-ip-adapter", "image_encoder": "random-bigG"}
    model = InstantStyle(
        full.pipe,
        full.image_encoder,
        full.feature_extractor,
        info,
        ids=ids,
        cache=EmbeddingCache(None),
        speed=speed,
    )
    return model, full.controlnet
