"""The images of a content-image request, read and checked before any model runs, at the generation size.

A content image of any aspect ratio is generated with its short side at the model's native size
and both sides multiples of the model's size unit (``sizes.fit_size``); the output is returned at
the content image's aspect ratio (resized from the generation size when rounding changed it).
InstantStyle-Plus sizes as its authors' ``resize_img`` (``sizes.plus_size``): short side 1024,
then the long side scaled to 1280, each side floored to a multiple of 64 (scaled with the model's
native size), and returns that size.

Masks (inpainting and regional) must be single-channel images (mode ``1``/``L``, or a grey
palette); a mask whose size differs from the content image is an error (never resized silently:
a mask drawn for another picture would repaint the wrong place).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from .. import control as control_mod
from .. import models
from ..config import GenerateRequest
from ..errors import InstantStyleError
from ..images import DEFAULT_MAX_PIXELS, image_hash, load_image
from ..sizes import check_size, fit_size, plus_size

if TYPE_CHECKING:
    from ..model import InstantStyle

MASK_MODES = ("1", "L")


@dataclass
class Inputs:
    """Decoded, checked images of one stylize request, at the generation size."""

    width: int
    height: int
    out_size: tuple[int, int]  # returned image size (the content's exact aspect ratio)
    content: Image.Image | None = None
    mask: Image.Image | None = None
    style_masks: list[Image.Image] = field(default_factory=list)
    control: list[Image.Image] = field(default_factory=list)
    hashes: dict = field(default_factory=dict)


def load_mask(source, *, what: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A single-channel mask as mode ``L``; RGB/RGBA/LA masks are refused (one line)."""
    if isinstance(source, Image.Image):
        image = source
        label = what
    else:
        path = Path(source)
        label = f"{what} '{source}'"
        load_image(path, what=what, max_pixels=max_pixels)  # existence, size limit, corruption
        image = Image.open(io.BytesIO(path.read_bytes()))
        image.load()
    if (
        image.mode == "P"
        and image.convert("RGB").convert("L").convert("RGB").tobytes() == image.convert("RGB").tobytes()
    ):
        image = image.convert("L")  # a palette of greys is one channel
    if image.mode not in MASK_MODES:
        bands = len(image.getbands())
        raise InstantStyleError(
            f"{label} has {bands} channels (mode {image.mode}); masks are single-channel (white = selected, "
            "black = not): save it as greyscale (mode L)"
        )
    return image.convert("L")


def _check_same_size(mask: Image.Image, content: Image.Image, label: str) -> None:
    if mask.size != content.size:
        raise InstantStyleError(
            f"{label} is {mask.width}x{mask.height} but the content image is {content.width}x{content.height}; "
            "masks must have the content image's size (resize the mask, it is not resized for you)"
        )


def precheck(
    req: GenerateRequest,
    base: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    images: bool = True,
    controlnets: bool = True,
) -> None:
    """Every check that needs no weights, for the CLI to run before loading gigabytes.

    ``images``: content / mask / control images (existence, pixel limit, mask channels and size);
    ``controlnets``: each ControlNet's config against the base UNet's config (kilobytes).
    """
    if images:
        _precheck_images(req, max_pixels)
    if controlnets and req.control:
        unet_config = models.load_unet_config(base)
        for entry in req.control:
            spec = control_mod.parse_control(entry, base=base)
            if not models.is_tiny(spec.model):  # the tiny ControlNets are built in memory
                control_mod.check_compatible(control_mod.read_config(spec.model), unet_config, spec.model)


def _precheck_images(req: GenerateRequest, max_pixels: int) -> None:
    content = load_image(req.content, what="content image", max_pixels=max_pixels) if req.content else None
    masks = ([("mask", req.mask)] if req.mask else []) + [
        (f"style mask {i + 1}", m) for i, m in enumerate(req.style_masks)
    ]
    for label, path in masks:
        mask = load_mask(path, what=label, max_pixels=max_pixels)
        if content is not None:
            _check_same_size(mask, content, label)
    for path in req.control_image:
        if path is not None:
            load_image(path, what="control image", max_pixels=max_pixels)


def load_inputs(
    model: InstantStyle,
    req: GenerateRequest,
    *,
    content_image=None,
    mask_image=None,
    style_masks=None,
    control_images=None,
) -> Inputs:
    """Read and check every image of the request (in-memory images override the request's paths)."""
    max_pixels = model.styles.max_pixels
    content = content_image if content_image is not None else req.content
    content = (
        load_image(content, what="content image", max_pixels=max_pixels) if content is not None else None
    )
    mask = mask_image if mask_image is not None else req.mask
    mask = load_mask(mask, what="mask", max_pixels=max_pixels) if mask is not None else None
    regional = list(style_masks) if style_masks is not None else list(req.style_masks)
    regional = [
        load_mask(m, what=f"style mask {i + 1}", max_pixels=max_pixels) for i, m in enumerate(regional)
    ]
    given = list(control_images) if control_images is not None else list(req.control_image)
    given = [
        load_image(c, what="control image", max_pixels=max_pixels) if c is not None else None for c in given
    ]
    if content is not None:
        if mask is not None:
            _check_same_size(mask, content, "mask")
        for i, m in enumerate(regional):
            _check_same_size(m, content, f"style mask {i + 1}")
    elif len({m.size for m in regional}) > 1:
        raise InstantStyleError("style masks have different sizes; draw them all on the same canvas")

    # Size: from the content image's aspect ratio unless the request fixes both sides.
    native, unit = model.native_size, model.size_unit
    reference = content or next((g for g in given if g is not None), None)
    if req.width and req.height:
        width, height, out = req.width, req.height, (req.width, req.height)
    elif req.task == "plus" and content is not None:
        width, height = plus_size(*content.size, native, native * 5 // 4, 2 * unit)
        out = (width, height)
    elif reference is not None:
        width, height, out = fit_size(*reference.size, native, unit)
    else:
        width, height = req.width or native, req.height or native
        out = (width, height)
    check_size(width, height, unit)

    hashes = {}
    if content is not None:
        hashes["content_sha256"] = image_hash(content)
        content = (
            content.resize((width, height), Image.LANCZOS) if content.size != (width, height) else content
        )
    if mask is not None:
        hashes["mask_sha256"] = image_hash(mask)
        mask = mask.resize((width, height), Image.NEAREST) if mask.size != (width, height) else mask
    if regional:
        hashes["style_mask_sha256"] = [image_hash(m) for m in regional]
    specs = [control_mod.parse_control(c, base=model.ids["base"]) for c in req.control]
    controls = control_mod.control_images(specs, content, given, req.canny_low, req.canny_high)
    if given:
        hashes["control_image_sha256"] = [image_hash(g) if g is not None else None for g in given]
    controls = [
        c.resize((width, height), Image.LANCZOS) if c.size != (width, height) else c for c in controls
    ]
    return Inputs(width, height, out, content, mask, regional, controls, hashes)
