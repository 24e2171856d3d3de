"""Reading untrusted images safely and writing PNGs atomically with their parameters."""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from .errors import InstantStyleError
from .files import atomic_write_bytes

DEFAULT_MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; far above anything SDXL or CLIP consume
METADATA_KEY = "instantstyle"  # PNG iTXt chunk holding the full parameters as JSON


def load_image(
    source: str | os.PathLike | bytes | Image.Image,
    *,
    what: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open, check and fully decode an image as RGB.

    Refuses (one-line ``InstantStyleError``): a missing file, a file that is not an image, a
    truncated image, and an image over ``max_pixels`` (checked from the header, before decoding,
    so a decompression bomb never allocates its pixels).
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, what, max_pixels)
        return source.convert("RGB")
    label = f"{what} ({len(source)} bytes)" if isinstance(source, bytes) else f"{what} '{source}'"
    if not isinstance(source, bytes):
        path = Path(source)
        if str(source).lower().startswith(("http://", "https://", "ftp://")):
            raise InstantStyleError(f"{label} is a URL; images are read from local files: download it first")
        if path.is_dir():
            raise InstantStyleError(f"{label} is a directory; give an image file in it")
        if not path.is_file():
            raise InstantStyleError(f"{label} does not exist; check the path")
        data = path.read_bytes()
    else:
        data = source
    try:
        with warnings.catch_warnings():
            # Our own limit (checked from the header just below) replaces PIL's warning;
            # PIL still raises DecompressionBombError past twice its limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image.size, label, max_pixels)
            image.load()
    except InstantStyleError:
        raise
    except Image.DecompressionBombError:
        raise InstantStyleError(
            f"{label} has more pixels than PIL will decode safely ({2 * Image.MAX_IMAGE_PIXELS}), over the "
            f"limit of {max_pixels}; use a smaller image"
        ) from None
    except UnidentifiedImageError:
        raise InstantStyleError(f"{label} is not an image PIL can read (PNG, JPEG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InstantStyleError(f"{label} is truncated or corrupt ({exc}); re-export it") from None
    return image.convert("RGB")


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise InstantStyleError(
            f"{label} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}; downscale it "
            "(or raise --max-pixels)"
        )


def image_hash(image: Image.Image) -> str:
    """Content hash of the decoded RGB pixels (same picture, any file format -> same hash)."""
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def a1111_parameters(params: dict) -> str:
    """The ``parameters`` text other SD tools (A1111, Civitai, ComfyUI readers) show (``provenance``)."""
    from .provenance import a1111_parameters as text

    return text(params)


def attach_metadata(image: Image.Image, params: dict) -> Image.Image:
    """Attach parameters to a PIL image (``image.info``) so ``save_png`` embeds them."""
    image.info[METADATA_KEY] = json.dumps(params, sort_keys=True, default=str)
    image.info["parameters"] = a1111_parameters(params)
    return image


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON parameters embedded by ``save_png``."""
    with Image.open(path) as im:
        text = im.info.get(METADATA_KEY)
    if text is None:
        raise InstantStyleError(f"'{path}' carries no instantstyle metadata")
    return json.loads(text)


def png_bytes(image: Image.Image) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key in (METADATA_KEY, "parameters"):
        if key in image.info:
            info.add_itxt(key, image.info[key])
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Fail before any work if ``path`` cannot be written."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InstantStyleError(f"output directory '{path.parent}' does not exist; create it first")
    if path.exists() and not overwrite:
        raise InstantStyleError(f"output '{path}' already exists; pass overwrite=True or choose another name")
    return path


def save_png(image: Image.Image, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``image`` (with its metadata) atomically: a temp file in the same directory, then rename.

    A reader never sees a half-written file, and an existing file is never replaced unless
    ``overwrite``.
    """
    path = check_output_path(path, overwrite=overwrite)
    try:  # exclusive unless overwrite: a file that appeared meanwhile is never clobbered
        atomic_write_bytes(path, png_bytes(image), exclusive=not overwrite)
    except FileExistsError:
        raise InstantStyleError(f"output '{path}' already exists; pass overwrite=True") from None
    return path


def image_processor(size: int):
    """CLIP preprocessing (resize, centre crop, normalise) at ``size``, as diffusers' default.

    The PIL implementation is used everywhere, so embeddings do not depend on whether
    torchvision happens to be installed.
    """
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers < 5
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
