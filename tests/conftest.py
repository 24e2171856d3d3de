"""Shared fixtures: the tiny model written to disk once per session (so the real loaders run),
an ``InstantStyle`` loaded from it, and hand-made style images. Everything is offline."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """No test reads or writes the user's caches or saved styles."""
    monkeypatch.setenv("INSTANTSTYLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("INSTANTSTYLE_STYLES", str(tmp_path / "styles"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    from instantstyle.testing.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_model(tiny_paths):
    """InstantStyle on the tiny model, loaded from disk through the real loaders (CPU, fp32)."""
    from instantstyle import InstantStyle

    return InstantStyle.from_pretrained(
        str(tiny_paths["base"]),
        str(tiny_paths["adapter"]),
        str(tiny_paths["image_encoder"]),
        device="cpu",
        dtype="fp32",
        cache_dir=None,
        progress=False,
    )


@pytest.fixture(scope="session")
def plus_model(tiny_paths):
    """InstantStyle with the tiny IP-Adapter Plus and ViT-H encoder, from disk (CPU, fp32)."""
    from instantstyle import InstantStyle

    return InstantStyle.from_pretrained(
        str(tiny_paths["base"]),
        str(tiny_paths["plus_adapter"]),
        str(tiny_paths["vit_h_image_encoder"]),
        device="cpu",
        dtype="fp32",
        cache_dir=None,
        progress=False,
    )


def _gradient(colour_axis: int, size: int = 64) -> Image.Image:
    a = np.zeros((size, size, 3), dtype=np.uint8)
    a[..., colour_axis] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    return Image.fromarray(a)


@pytest.fixture(scope="session")
def style_images(tmp_path_factory):
    """Two clearly different style references on disk: a red square and a blue gradient."""
    d = tmp_path_factory.mktemp("styles_in")
    red = d / "red.png"
    Image.new("RGB", (64, 64), (220, 30, 30)).save(red)
    blue = d / "blue.png"
    _gradient(2).save(blue)
    green = d / "green.jpg"
    _gradient(1, 80).save(green, quality=95)
    return {"red": red, "blue": blue, "green": green}
