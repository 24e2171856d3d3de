"""Image sizes: the model's size unit, and the generation size of a content image.

An SDXL pipeline generates sizes that are multiples of its *size unit*: pixels per latent cell
times the UNet's total downsampling (32 for SDXL, 8 for the tiny model). A content image of any
aspect ratio is generated with its short side at the model's native size and both sides multiples
of the unit (``fit_size``); InstantStyle-Plus sizes as its authors' ``resize_img`` (``plus_size``).
"""

from __future__ import annotations

from .errors import InstantStyleError


def size_unit(pipe) -> int:
    """Pixels per latent cell times the UNet's total downsampling (32 for SDXL, 8 for the tiny model)."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def check_size(width: int, height: int, unit: int) -> None:
    """One line unless both sides are multiples of ``unit``."""
    if width % unit or height % unit:
        raise InstantStyleError(
            f"--width/--height {width}x{height}: must be multiples of {unit} for this model"
        )


def fit_size(
    width: int, height: int, native: int, unit: int, limit: int = 4096
) -> tuple[int, int, tuple[int, int]]:
    """Generation size (multiples of ``unit``, short side ``native``) and exact-aspect output size."""
    short, long_ = min(width, height), max(width, height)
    exact_long = round(native * long_ / short)
    gen_long = max(unit, round(native * long_ / short / unit) * unit)
    if gen_long > limit:
        raise InstantStyleError(
            f"content image {width}x{height} is too elongated: at short side {native} its long side would be "
            f"{gen_long} px (limit {limit}); crop it closer to 4:1"
        )
    if width <= height:
        return native, gen_long, (native, exact_long)
    return gen_long, native, (exact_long, native)


def plus_size(
    width: int, height: int, min_side: int = 1024, max_side: int = 1280, base: int = 64
) -> tuple[int, int]:
    """InstantStyle-Plus's ``resize_img``: short side to ``min_side``, then long side to ``max_side``,
    each side floored to a multiple of ``base`` (16:9 -> 1280x704, 4:3 -> 1280x960, 1:1 -> 1280x1280)."""
    ratio = min_side / min(width, height)
    w, h = round(ratio * width), round(ratio * height)
    ratio = max_side / max(w, h)
    w, h = round(ratio * w), round(ratio * h)
    return max(base, w // base * base), max(base, h // base * base)
