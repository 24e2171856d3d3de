"""B-LoRA's LoRA gradients at the default CUDA training precision (an fp16 base) equal fp32's.

At SDXL's 1024 px the latent has 4 x 128 x 128 elements, so the gradient of the mean MSE per
element is about 2e-5: subnormal in fp16. The tiny model (VAE factor 2) reaches such sizes at
a few hundred pixels; the test trains at 192 px (a 96 x 96 latent, 2.3 s per backward). The
fp16 path runs on the CPU with the same code as on CUDA (an fp16 UNet, fp32 LoRA weights,
``torch.amp.GradScaler``). Measured relative L2 error against fp32, with the scaler / with the
plain ``loss.backward()`` the code had before: 192 px 0.7% / 62% (11% of the elements exactly
zero); 256 px 0.5% / 72% (35% zero, 16 of the 64 LoRA tensors all-zero).
"""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from instantstyle import blocks
from instantstyle.methods import b_lora
from instantstyle.training import b_lora as blora_training

RESOLUTION, RANK = 192, 4


@pytest.fixture(scope="module")
def pipes(tiny_model):
    """The shared tiny pipe (fp32) and an fp16 pipe with copies of its UNet and text encoders."""
    from diffusers import StableDiffusionXLPipeline

    fp32 = tiny_model.pipe
    parts = dict(fp32.components)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        parts[name] = copy.deepcopy(parts[name]).to(torch.float16)
    for name in ("image_encoder", "feature_extractor"):
        parts[name] = None
    return fp32, StableDiffusionXLPipeline(**parts)


def _lora_state(pipe, seed=0):
    """Random LoRA weights (A and B non-zero, so every factor gets a gradient), PEFT keys."""
    unet = pipe.unet
    targets = b_lora.lora_targets(unet, [blocks.BLORA_CONTENT_BLOCK, blocks.BLORA_STYLE_BLOCK])
    gen = torch.Generator().manual_seed(seed)
    with b_lora.scoped_lora(unet, targets, RANK, RANK) as params:
        with torch.no_grad():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        return blora_training._peft_state(unet, "blora")


def _relative_l2(a: dict, b: dict) -> float:
    num = sum(((a[k] - b[k]) ** 2).sum() for k in a)
    return float((num / sum((b[k] ** 2).sum() for k in b)).sqrt())


def test_fp16_lora_gradients_match_fp32_and_none_is_all_zero(pipes):
    fp32, fp16 = pipes
    assert blora_training.precision(fp16.unet) == "fp16" and blora_training.precision(fp32.unet) == "no"
    image = Image.new("RGB", (240, 192), (200, 60, 40))  # 5:4, kept: trained at 240x192
    state = _lora_state(fp32)
    ref = blora_training.lora_gradients(fp32, image, resolution=RESOLUTION, rank=RANK, lora_state=state)
    got = blora_training.lora_gradients(fp16, image, resolution=RESOLUTION, rank=RANK, lora_state=state)
    assert (
        got.keys() == ref.keys() and len(ref) == 2 * 2 * 4 * 2 * 2
    )  # 2 modules x 2 layers x attn x proj x A/B
    err = _relative_l2(got, ref)
    zero = [k for k, g in got.items() if not g.abs().sum() > 0]
    assert not zero, zero[:3]
    assert err < 0.02, err  # measured 0.007 (0.62 without loss scaling)
    assert sum(int((g == 0).sum()) for g in ref.values()) == 0  # fp32 has no exact zeros either


def test_training_size_keeps_the_aspect_ratio():
    assert blora_training.training_size(1600, 900, 1024, 32) == (1824, 1024)
    assert blora_training.training_size(768, 1024, 1024, 32) == (1024, 1376)
    assert blora_training.training_size(500, 500, 1024, 32) == (1024, 1024)
