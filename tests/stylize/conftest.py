"""Fixtures for the stylize tests: a content image, masks, and stock diffusers pipelines on the tiny files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stock_diffusers import load_stock_sdxl


@pytest.fixture(scope="session")
def content_images(tmp_path_factory):
    """A 64x64 content picture (a bright box), a 64x96 one (other aspect), and masks."""
    d = tmp_path_factory.mktemp("content")
    a = np.zeros((64, 64, 3), np.uint8)
    a[16:48, 12:40] = (240, 200, 40)
    a[30:60, 36:60] = (40, 90, 220)
    Image.fromarray(a).save(d / "content.png")
    wide = np.zeros((64, 96, 3), np.uint8)
    wide[10:50, 20:80] = 255
    Image.fromarray(wide).save(d / "wide.png")
    Image.new("RGB", (80, 80), (10, 200, 10)).save(d / "big.png")  # 6400 px, over a 5000 px limit
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    Image.fromarray(left).save(d / "left.png")
    Image.fromarray(255 - left).save(d / "right.png")
    Image.fromarray(left).convert("RGB").save(d / "rgb_mask.png")
    Image.fromarray(left[:32, :32]).save(d / "small_mask.png")
    return {p.stem: p for p in d.iterdir()}


@pytest.fixture(scope="module")
def stock_sdxl(tiny_paths, tiny_model):
    """Stock diffusers SDXL + IP-Adapter loaded from the same tiny files (not our loaders)."""
    pipe = load_stock_sdxl(tiny_paths, tiny_model.feature_extractor)
    pipe.set_ip_adapter_scale({"up": {"block_0": [0.0, 1.0, 0.0]}})  # InstantStyle's style-only dict
    return pipe
