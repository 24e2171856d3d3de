"""What files a request may bring, and how they reach the library: uploads only, never a path.

A request never names a file. The request fields that name images (``content``, ``mask``,
``style_masks``, ``control_image`` entries, ``composition``, ``negative_style``) may only hold
the label ``UPLOAD``; the images themselves are uploads, checked (bytes, then header pixels,
then decoding) and passed to the library in memory (``InstantStyle.generate(content_image=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import GenerateRequest
from ..errors import InstantStyleError
from .limits import Limits

UPLOAD = "<upload>"


class UploadTooLargeError(InstantStyleError):
    """An upload is over the byte limit (HTTP 413)."""


def decode_upload(data: bytes, name: str, limits: Limits, *, what: str = "style image", mask: bool = False):
    """An uploaded image -> PIL image: byte size first, then header pixel count, then decode.

    RGB, or with ``mask`` a single-channel mode ``L`` image (an RGB mask is refused, as the CLI does).
    """
    from ..images import load_image

    label = f"{what} {name!r}"
    if len(data) > limits.max_upload_bytes:
        raise UploadTooLargeError(
            f"{label} is {len(data)} bytes, over the limit of {limits.max_upload_bytes} bytes; "
            "send a smaller file (server flag --max-upload-bytes)"
        )
    if not data:
        raise InstantStyleError(f"{label} is empty; send the image file's bytes")
    image = load_image(data, what=label, max_pixels=limits.max_pixels)  # pixel limit, corruption
    if not mask:
        return image
    import io

    from PIL import Image

    from ..pipelines.inputs import load_mask

    raw = Image.open(io.BytesIO(data))
    raw.load()
    return load_mask(raw, what=label, max_pixels=limits.max_pixels)


def fill_image_fields(
    params: dict,
    *,
    content: bool = False,
    mask: bool = False,
    style_masks: int = 0,
    control_images: int = 0,
    composition: bool = False,
    negative_style: bool = False,
) -> dict:
    """Set the request's image fields to ``UPLOAD`` labels for the files that came with it.

    A client may leave them out (the server fills them) or send the ``UPLOAD`` label itself; any
    other value (a path, a URL) is refused. ``control_image`` may be sent as a list of ``null``
    (canny/tile derive theirs from the content image) and ``"<upload>"`` entries: the uploaded
    control images fill the ``"<upload>"`` entries in order. Without it, the uploads are one per
    ``control`` entry, in order.
    """
    params = dict(params)
    for name, given in (
        ("content", content),
        ("mask", mask),
        ("composition", composition),
        ("negative_style", negative_style),
    ):
        value = params.get(name)
        if value not in (None, UPLOAD):
            raise InstantStyleError(
                f"{name} {value!r} is not allowed: a request never names a file; upload the "
                f"image as the multipart file field '{name}'"
            )
        if value == UPLOAD and not given:
            raise InstantStyleError(f"{name} is {UPLOAD!r} but no file '{name}' was uploaded")
        params[name] = UPLOAD if given else None
    for name, n, part in (
        ("style_masks", style_masks, "style_masks"),
        ("control_image", control_images, "control_images"),
    ):
        value = params.get(name)
        if value is None or value == []:
            params[name] = [UPLOAD] * n
            continue
        allowed = (UPLOAD, None) if name == "control_image" else (UPLOAD,)
        if not isinstance(value, list) or any(v not in allowed for v in value):
            raise InstantStyleError(
                f"{name} {value!r} is not allowed: a request never names a file; upload the images as the "
                f"multipart file field '{part}'"
                + (' (entries may be null or "<upload>")' if name == "control_image" else "")
            )
        if sum(v == UPLOAD for v in value) != n:
            raise InstantStyleError(
                f"{name} has {sum(v == UPLOAD for v in value)} {UPLOAD!r} entries but {n} "
                f"file(s) were uploaded as '{part}'"
            )
    return params


@dataclass
class Uploads:
    """A request's decoded content / mask / per-style masks / control images (in memory)."""

    content: object = None  # PIL RGB
    mask: object = None  # PIL L
    style_masks: list = field(default_factory=list)  # PIL L, one per style image
    control_images: list = field(default_factory=list)  # PIL RGB, in upload order
    composition: object = None  # PIL RGB
    negative_style: object = None  # PIL RGB

    def kwargs(self, req: GenerateRequest) -> dict:
        """Keyword arguments for ``InstantStyle.generate``: control uploads fill ``UPLOAD`` entries in order."""
        control = None
        if req.control_image:
            it = iter(self.control_images)
            control = [next(it) if v == UPLOAD else None for v in req.control_image]
        return {
            "content_image": self.content,
            "mask_image": self.mask,
            "style_mask_images": list(self.style_masks) or None,
            "control_images": control,
            "composition_image": self.composition,
            "negative_style_image": self.negative_style,
        }
