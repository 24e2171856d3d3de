"""Stylize modes must not change the shared model's dtype (diffusers' from_pipe defaults to float32)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def test_derived_pipelines_keep_the_models_dtype(tmp_path):
    from instantstyle import InstantStyle

    model = InstantStyle.from_pretrained("tiny", device="cpu", dtype="bf16", cache_dir=None, progress=False)
    content = tmp_path / "content.png"
    Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8)).save(content)
    style = Image.new("RGB", (64, 64), (200, 30, 30))
    model.generate(prompt="a cat", style_images=[style], content=str(content), strength=0.5, steps=2, seed=0)
    parts = [
        model.pipe.unet,
        model.pipe.vae,
        model.pipe.text_encoder,
        model.pipe.text_encoder_2,
        model.image_encoder,
    ]
    assert {next(p.parameters()).dtype for p in parts} == {torch.bfloat16}
