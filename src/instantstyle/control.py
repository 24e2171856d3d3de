"""ControlNets for stylizing a content image: parsing ``--control``, Canny edges, loading and checking.

A ``--control`` entry is one of
- ``canny``: Canny edges of the content image (OpenCV, thresholds ``canny_low``/``canny_high``),
  fed to ``models.DEFAULT_CONTROLNET_CANNY``;
- ``tile``: the content image itself, fed to ``models.DEFAULT_CONTROLNET_TILE``;
- ``KIND=MODEL``: one of those kinds with another ControlNet (local dir or Hub id);
- ``MODEL``: any other SDXL ControlNet (local diffusers dir or Hub id), fed ``--control-image``.

With the tiny base model the built-in kinds default to a tiny random ControlNet, so every mode runs
offline. A ControlNet's config is checked against the base UNet (cross-attention width,
micro-conditioning widths, down-block channels) before its weights load, so a ControlNet for
another model family fails with one line instead of a shape error mid-generation.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path

from . import models
from .errors import InstantStyleError

KINDS = ("canny", "tile")
DEFAULT_SCALES = {"canny": 0.6, "tile": 0.4, "custom": 0.6}
# Config keys a ControlNet must share with the base UNet: its residuals are added to the UNet's
# down/mid features, and it consumes the same text tokens and SDXL micro-conditioning.
MATCHING_KEYS = (
    "cross_attention_dim",
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
    "block_out_channels",
    "layers_per_block",
    "in_channels",
)

_LOADED: weakref.WeakKeyDictionary = (
    weakref.WeakKeyDictionary()
)  # InstantStyle -> {model id: ControlNetModel}


@dataclass(frozen=True)
class ControlSpec:
    kind: str  # "canny" | "tile" | "custom"
    model: str  # model reference ("tiny" for the built-in tiny one)

    @property
    def default_scale(self) -> float:
        return DEFAULT_SCALES[self.kind]


def parse_control(entry: str, *, base: str | None = None) -> ControlSpec:
    """``canny`` | ``tile`` | ``KIND=MODEL`` | ``MODEL`` -> ``ControlSpec`` (a built-in kind's model for ``base``)."""
    entry = entry.strip()
    kind, sep, ref = entry.partition("=")
    if sep:
        if kind not in KINDS:
            raise InstantStyleError(
                f"--control {entry!r}: '{kind}' is not a built-in kind ({', '.join(KINDS)}); "
                "give KIND=MODEL for those, or the ControlNet path / Hub id alone with --control-image"
            )
        if not ref:
            raise InstantStyleError(f"--control {entry!r}: missing the model after '='")
        return ControlSpec(kind, ref)
    if entry in KINDS:
        return ControlSpec(entry, models.default_controlnet(entry, base or models.DEFAULT_BASE))
    if not entry:
        raise InstantStyleError("--control '': give canny, tile, KIND=MODEL or a ControlNet path / Hub id")
    return ControlSpec("custom", entry)


def canny(image, low: int = 50, high: int = 200):
    """Canny edge map of a PIL image as a 3-channel PIL image (white edges on black)."""
    try:
        import cv2
    except ImportError:
        raise InstantStyleError("--control canny needs OpenCV: pip install 'instantstyle[control]'") from None
    import numpy as np
    from PIL import Image

    if not low < high:
        raise InstantStyleError(f"--canny-low {low} must be below --canny-high {high}")
    gray = np.asarray(image.convert("L"))  # [H, W] uint8
    edges = cv2.Canny(gray, low, high)  # [H, W] uint8 in {0, 255}
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def read_config(ref: str) -> dict:
    """The ControlNet's ``config.json`` only (kilobytes), local or from the Hub cache."""
    src = models.parse_source(ref)
    if src.local is not None:
        path = src.local / "config.json"
        if not path.is_file():
            raise models.missing("ControlNet", src, " as a diffusers ControlNet directory (no config.json)")
    else:
        try:
            path = models.resolve_file(
                f"{src.repo_id}/{src.subpath + '/' if src.subpath else ''}config.json", "ControlNet"
            )
        except InstantStyleError:
            raise models.missing("ControlNet", src) from None  # the fetch command for the whole model
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InstantStyleError(
            f"ControlNet '{ref}': config.json is unreadable ({type(exc).__name__})"
        ) from None


def check_compatible(config: dict, unet_config, ref: str) -> None:
    """Refuse a ControlNet whose residuals or conditioning do not fit the base UNet."""
    if config.get("_class_name") not in (None, "ControlNetModel"):
        raise InstantStyleError(
            f"ControlNet '{ref}' is a {config.get('_class_name')}, not a ControlNetModel; use an SDXL ControlNet"
        )
    for key in MATCHING_KEYS:
        theirs, ours = (
            config.get(key),
            unet_config.get(key) if isinstance(unet_config, dict) else getattr(unet_config, key, None),
        )
        if isinstance(theirs, list | tuple) and isinstance(ours, list | tuple):
            theirs, ours = list(theirs), list(ours)
        if theirs != ours:
            raise InstantStyleError(
                f"ControlNet '{ref}' does not match the base model: its {key} is {theirs} but the UNet's is "
                f"{ours}; it was made for another model family (use an SDXL ControlNet such as "
                f"{models.DEFAULT_CONTROLNET_CANNY})"
            )


def register(model, ref: str, controlnet) -> None:
    """Use an already-built ControlNet under ``ref`` for ``model`` (benchmarks, custom loaders)."""
    check_compatible(dict(controlnet.config), model.pipe.unet.config, ref)
    _LOADED.setdefault(model, {})[ref] = controlnet


def unregister(model, ref: str) -> None:
    """Forget what ``register`` put under ``ref`` for ``model`` (the server does this when it closes)."""
    _LOADED.get(model, {}).pop(ref, None)


def load_controlnet(model, ref: str):
    """Load (once per ``InstantStyle``) and check a ControlNet; on the model's device and dtype."""
    cache = _LOADED.setdefault(model, {})
    if ref in cache:
        return cache[ref]
    if not models.is_tiny(ref):  # the config before the weights load (the tiny ones are built in memory)
        check_compatible(read_config(ref), model.pipe.unet.config, ref)
    controlnet = models.load_controlnet(ref, model.dtype)
    check_compatible(dict(controlnet.config), model.pipe.unet.config, ref)
    controlnet = controlnet.to(model.device, model.dtype).eval()
    cache[ref] = controlnet
    return controlnet


def control_images(specs: list[ControlSpec], content, given: list, low: int, high: int) -> list:
    """One control image per ControlNet: the user's, else derived from the content image."""
    out = []
    for i, spec in enumerate(specs):
        image = given[i] if i < len(given) else None
        if image is None:
            if spec.kind == "custom":
                raise InstantStyleError(
                    f"--control {spec.model}: a ControlNet other than canny/tile needs its --control-image "
                    "(e.g. a depth map)"
                )
            if content is None:
                raise InstantStyleError(
                    f"--control {spec.kind} derives its image from --content; give --content"
                )
            image = canny(content, low, high) if spec.kind == "canny" else content
        out.append(image)
    return out
