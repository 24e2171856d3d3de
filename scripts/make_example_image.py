"""Draw examples/ref.png, the README's example style reference, from nothing but this script.

A small flat-colour "paper cut" seascape (banded sky, sun, layered waves, dithered grain) drawn
with Pillow and NumPy from a fixed seed, so it carries no third party's rights and anyone can
re-make it byte for byte:  python scripts/make_example_image.py
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 256
OUT = Path(__file__).resolve().parents[1] / "examples" / "ref.png"


def draw() -> Image.Image:
    rng = np.random.default_rng(2404)  # the InstantStyle paper's arXiv month
    im = Image.new("RGB", (SIZE, SIZE))
    d = ImageDraw.Draw(im)
    sky = [(250, 214, 165), (246, 178, 140), (230, 140, 130), (190, 110, 140)]
    for i, colour in enumerate(sky):  # bands of sky, lightest at the horizon
        d.rectangle([0, i * 34, SIZE, (i + 1) * 34 + 1], fill=colour[::-1] if i == 3 else colour)
    d.ellipse([150, 60, 210, 120], fill=(255, 240, 200))
    sea = [(70, 120, 170), (50, 95, 150), (35, 70, 125), (25, 50, 100)]
    for j, colour in enumerate(sea):  # layered waves, darker towards the viewer
        top = 130 + j * 30
        points = [(x, top + 8 * math.sin(x / (18 - 2 * j) + j)) for x in range(0, SIZE + 4, 4)]
        d.polygon([(0, SIZE), *points, (SIZE, SIZE)], fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(0.8))
    grain = rng.integers(-10, 11, size=(SIZE, SIZE, 1))  # paper grain
    pixels = np.clip(np.asarray(im, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    draw().save(OUT, optimize=True)
    print(OUT)
