"""Fixtures of the batch tests: a 12-row manifest on the tiny model (2 steps, 64 px), the model
loaded once (``--base tiny``, as the subprocess engines load it), and one uninterrupted
single-process run of the manifest that every comparison shares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# 2 styles x 2 prompts x 3 seeds; the prompts have different sizes (two shapes).
STYLES = {"red": (220, 30, 30), "blue": (30, 60, 210)}
PROMPTS = [{"prompt": "a cat", "width": 64, "height": 64}, {"prompt": "a house", "width": 64, "height": 96}]
SEEDS = [1, 2, 3]


def tiny_options():
    """The model every test runs: ``--base tiny --device cpu`` (the options are part of each row id)."""
    from instantstyle.batch import ModelOptions

    return ModelOptions(base="tiny", device="cpu", cache_dir=None)


def options(out, **kwargs):
    from instantstyle.batch import BatchOptions

    return BatchOptions(out=out, progress=False, model=tiny_options(), **kwargs)


def manifest_rows(style_dir: str = "refs") -> list[dict]:
    return [
        {"style": [f"{style_dir}/{name}.png"], **prompt, "seed": seed, "steps": 2}
        for name in STYLES
        for prompt in PROMPTS
        for seed in SEEDS
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def batch_dir(tmp_path_factory) -> Path:
    """A folder with refs/{red,blue,corrupt}.png and manifest.jsonl (12 rows, relative paths)."""
    d = tmp_path_factory.mktemp("batch")
    (d / "refs").mkdir()
    for name, colour in STYLES.items():
        Image.new("RGB", (48, 48), colour).save(d / "refs" / f"{name}.png")
    good = (d / "refs" / "red.png").read_bytes()
    (d / "refs" / "corrupt.png").write_bytes(good[: len(good) // 2])  # a truncated PNG
    write_jsonl(d / "manifest.jsonl", manifest_rows())
    return d


@pytest.fixture(scope="session")
def batch_model():
    """The tiny model (built, not read from disk: the same weights ``--base tiny`` gives a subprocess)."""
    return tiny_options().load()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="session")
def baseline(batch_dir, batch_model, tmp_path_factory):
    """One uninterrupted single-process run: (out dir, summary, {image name: pixels})."""
    from instantstyle.batch import run_batch

    out = tmp_path_factory.mktemp("baseline")
    summary = run_batch(batch_dir / "manifest.jsonl", options(out), model=batch_model)
    images = {p.name: pixels(p) for p in sorted((out / "images").glob("*.png"))}
    return out, summary, images


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def assert_same_images(out: Path, expected: dict[str, np.ndarray], tolerance: int = 0) -> None:
    got = {p.name: pixels(p) for p in sorted((out / "images").glob("*.png"))}
    assert sorted(got) == sorted(expected)
    worst = max(int(np.abs(got[name] - expected[name]).max()) for name in expected)
    assert worst <= tolerance, f"max abs pixel difference {worst} > {tolerance}"
