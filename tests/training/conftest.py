"""Fixtures for the training tests: a synthetic shapes dataset the tests generate, and one shared
training run on the tiny model (CPU) that several tests inspect."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 190, 40), "yellow": (235, 220, 40)}
SHAPES = ("circle", "square")

# The shared run: style block + up_blocks.1 (a custom spec), so down blocks and the mid block stay
# untrained and the hook test has something to check; 2 x 2 accumulation, checkpoint at K.
K = 12
RUN = dict(
    resolution=32,
    batch_size=2,
    gradient_accumulation_steps=2,
    learning_rate=5e-2,
    max_steps=2 * K,
    checkpoint_every=K,
    keep_checkpoints=None,
    blocks="style,up_blocks.1",
    ema=True,
    ema_decay=0.99,
    validate_every=K,
    validation_steps=2,
    validation_seeds=[0, 1],
    seed=3,
    save_dtype="fp32",
    max_grad_norm=None,
)


def make_shapes(directory: Path, n: int = 12, seed: int = 0, size=(48, 40)) -> Path:
    """``n`` coloured circles/squares on a light background, each with a ``.txt`` caption."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name, colour = rng.choice(list(COLOURS.items()))
        shape = rng.choice(SHAPES)
        im = Image.new("RGB", size, (235, 235, 235))
        draw = ImageDraw.Draw(im)
        x, y = rng.randint(2, size[0] - 22), rng.randint(2, size[1] - 22)
        (draw.ellipse if shape == "circle" else draw.rectangle)([x, y, x + 20, y + 20], fill=colour)
        im.save(directory / f"{i:03d}.png")
        (directory / f"{i:03d}.txt").write_text(f"a {name} {shape}")
    return directory


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def trained(tiny_paths, shapes_dir, tmp_path_factory):
    """One training run (kept with its trainer so tests can inspect the models)."""
    from instantstyle.training.adapter_trainer import AdapterTrainer
    from instantstyle.training.config import make_config

    out = tmp_path_factory.mktemp("run") / "out"
    cfg = make_config(
        base=str(tiny_paths["base"]),
        image_encoder=str(tiny_paths["image_encoder"]),
        data=str(shapes_dir),
        out=str(out),
        cache_dir=str(out.parent / "cache"),
        **RUN,
    )
    trainer = AdapterTrainer(cfg, progress=False, log=lambda m: None)
    result = trainer.train()
    return trainer, result
