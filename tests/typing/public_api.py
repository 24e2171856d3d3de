"""The public API as a user writes it (README's Python section), for the type checker only.

``make lint`` runs basedpyright over this file (see ``[tool.basedpyright]`` in pyproject.toml): a
re-export that vanished, or an annotation that makes the documented calls ill-typed, fails the
check. pytest does not collect it and nothing runs it; every name is imported from ``instantstyle``
only, as a user would.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from instantstyle import (
    PRESETS,
    GenerateRequest,
    InstantStyle,
    InstantStyleError,
    ModelNotFoundError,
    Style,
    combine_styles,
    load_style,
    read_metadata,
    save_png,
    save_style,
    subtract_content,
)


def first_result(out: Path) -> list[Path]:
    model: InstantStyle = InstantStyle.from_pretrained(device="cpu", dtype="fp32")
    images: list[Image.Image] = model.generate(
        prompt="a cat", style=["ref.png"], mode="style", content_prompt="a dog", seed=42, num_images=2
    )
    request = GenerateRequest(prompt="a cat", style=["ref.png"], seed=42)
    images += model.generate(request, style_images=[Image.new("RGB", (64, 64))])
    return [save_png(im, out / f"cat-{i}.png") for i, im in enumerate(images)]


def styles(model: InstantStyle) -> Style:
    style: Style = model.encode_style(["a.png", "b.png"], weights=[0.7, 0.3])
    path: Path = save_style(style, "watercolour")
    assert load_style(str(path)) is not None
    return style


def maths() -> torch.Tensor:
    embeds = torch.zeros(2, 1, 1280)  # [N references, tokens, D]
    mixed: torch.Tensor = combine_styles(embeds, [0.7, 0.3])
    return subtract_content(mixed, torch.zeros(1, 1280), 0.5)


def metadata(path: Path) -> dict:
    return read_metadata(path)


def errors() -> tuple[type[Exception], ...]:
    assert "style" in PRESETS
    return (InstantStyleError, ModelNotFoundError)
