"""Request checks: everything about a request that can be refused before it is queued.

They run in the caller's thread (no model runs), so bad input is refused at once with a one-line
message and nothing is queued: ``params_dict``/``parse_request`` read the ``params`` field
(nesting and non-finite numbers refused before pydantic sees it), ``check_request`` holds the
request to the server's rules (no file or model named by a client, saved styles by name only,
the ``Limits``), ``check_inputs`` reads the uploaded content images as the library will.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..config import GenerateRequest, format_validation_error
from ..errors import InstantStyleError
from .limits import Limits, check_amounts, check_cost, check_prompt_lengths
from .uploads import UPLOAD, Uploads

MAX_JSON_DEPTH = 32  # nesting of the params JSON (objects + lists); the schema itself needs 2


def _no_constant(name: str):
    raise InstantStyleError(f"params holds {name}, which is not a JSON number; send finite numbers")


def json_depth(text: str | bytes) -> int:
    """Deepest nesting of objects/lists in JSON text, found without parsing it (strings skipped)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _dict_depth(value, limit: int, depth: int = 0) -> int:
    if depth > limit:
        return depth
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
    return max((_dict_depth(c, limit, depth + 1) for c in children), default=depth)


def params_dict(params: str | bytes | dict) -> dict:
    """The request's ``params`` field (JSON text, or already a dict) as a dict, or a one-line error.

    Nesting deeper than ``MAX_JSON_DEPTH`` and the non-standard ``Infinity``/``NaN`` are refused
    before anything else looks at the value.
    """
    too_deep = InstantStyleError(
        f"params is nested more than {MAX_JSON_DEPTH} levels deep; request fields are flat values and lists"
    )
    if isinstance(params, str | bytes):
        if json_depth(params) > MAX_JSON_DEPTH:
            raise too_deep
        try:
            params = json.loads(params or "{}", parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            raise InstantStyleError(
                f"params is not valid JSON ({exc.msg} at character {exc.pos}); "
                'send an object such as {"prompt": "a cat", "seed": 1}'
            ) from None
    elif _dict_depth(params, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise too_deep
    if not isinstance(params, dict):
        raise InstantStyleError(
            f"params must be a JSON object of request fields, got {type(params).__name__}"
        )
    return params


def parse_request(params: str | dict, *, style_images: int = 0) -> GenerateRequest:
    """JSON text or a dict of ``GenerateRequest`` fields -> a validated request (one-line errors).

    ``style_images`` uploaded images come before ``style`` in the reference list, so
    ``style_weights`` must have ``style_images + len(style)`` values.
    """
    params = params_dict(params)
    from pydantic import ValidationError

    try:
        return GenerateRequest.model_validate(params, context={"style_images": style_images})
    except ValidationError as exc:
        raise InstantStyleError(format_validation_error(exc, flag_style=False)) from None


def check_request(
    req: GenerateRequest,
    model,
    limits: Limits,
    *,
    style_images: int = 0,
    controlnets: Sequence[str] = (),
    loras: Sequence[str] = (),
) -> None:
    """Everything about a request that can be refused before it is queued (no model runs).

    A request never names a file: ``style`` entries must be ``@name`` of a saved style (the name
    is checked so it cannot leave the styles directory); images come as uploads (``UPLOAD``
    labels in the image fields); ``control`` entries are the built-in kinds or ControlNets the
    operator allowed by name (``controlnets``); ``loras`` entries are ``NAME[:SCALE]`` of a LoRA the
    operator offers (``loras``: ``serve --lora-dir``); b-lora, whose ``b_lora`` is a directory, is refused.
    """
    _check_no_paths(req, controlnets)
    check_lora_names(req, loras)
    check_prompt_lengths(req, limits)
    n_refs = _check_styles(req, model.styles.styles_directory, style_images)
    native = model.native_size
    check_amounts(req, n_refs, native, limits)
    if req.method != "instantstyle":
        return
    model.resolve_scales(req)  # an unknown block name fails here, with the valid names
    unit = model.pipe.vae_scale_factor * 2 ** (len(model.pipe.unet.config.block_out_channels) - 1)
    width, height = req.width or native, req.height or native
    if width % unit or height % unit:
        raise InstantStyleError(f"width/height {width}x{height} must be multiples of {unit} for this model")


def _check_styles(req: GenerateRequest, directory, style_images: int) -> int:
    """``style`` entries are saved styles by name (``@name``, never a path); the number of references."""
    from ..embeddings import STYLE_NAME, list_styles, style_path

    for ref in req.style:
        if not (ref.startswith("@") and STYLE_NAME.fullmatch(ref[1:])):
            raise InstantStyleError(
                f"style entry {ref!r} is not allowed: a request may only name saved styles as @name "
                "(letters, digits, '_', '-', '.'); upload image files instead of giving paths"
            )
        if not style_path(ref[1:], directory).is_file():
            known = ", ".join(list_styles(directory)) or "none saved yet"
            raise InstantStyleError(
                f"saved style {ref!r} not found (saved styles: {known}); create it with POST /v1/styles"
            )
    n_refs = style_images + len(req.style)
    if n_refs == 0:
        raise InstantStyleError(
            'no style reference: upload at least one style image, or name a saved style in style ("@name")'
        )
    return n_refs


def check_lora_names(req: GenerateRequest, offered: Sequence[str]) -> None:
    """Each ``loras`` entry names a LoRA this server offers (``NAME[:SCALE]``), never a path or Hub id."""
    from ..embeddings import STYLE_NAME
    from ..loras import split_entry

    if req.loras and not offered:
        raise InstantStyleError(
            "this server offers no LoRAs (a request never names a file); its operator can offer some "
            "with `instantstyle serve --lora-dir DIR` (each DIR/NAME.safetensors becomes LoRA NAME)"
        )
    for entry in req.loras:
        name, _ = split_entry(entry)
        if not STYLE_NAME.fullmatch(name) or name not in offered:
            raise InstantStyleError(
                f"lora {name!r} is not one this server offers ({', '.join(offered)}): a request names a "
                "LoRA as NAME or NAME:SCALE, never a path or Hub id"
            )


def check_controlnet_names(controlnets: dict) -> None:
    """Operator ControlNet names: request-safe words (no path), not a built-in kind."""
    from ..control import KINDS
    from ..embeddings import STYLE_NAME

    for name, ref in controlnets.items():
        if not STYLE_NAME.fullmatch(name) or name in KINDS:
            raise InstantStyleError(
                f"--controlnet {name}={ref}: the name must be 1-64 letters, digits, '_', '-', '.' and not "
                f"{' or '.join(KINDS)} (requests use canny=NAME to feed it Canny edges)"
            )


def _check_no_paths(req: GenerateRequest, controlnets: Sequence[str]) -> None:
    """No field of ``req`` names a file or a model: image fields hold ``UPLOAD``, controls are names."""
    from ..control import KINDS

    images = [
        req.content,
        req.mask,
        *req.style_masks,
        *req.control_image,
        req.composition,
        req.negative_style,
    ]
    bad = next((v for v in images if v not in (None, UPLOAD)), None)
    if bad is not None:
        raise InstantStyleError(
            f"image field value {bad!r} is not allowed: a request never names a file; "
            "upload the image (multipart fields content, mask, style_masks, control_images, "
            "composition, negative_style)"
        )
    allowed = [*KINDS, *controlnets]
    for entry in req.control:
        kind, sep, name = entry.partition("=")
        ok = (name in controlnets and kind in KINDS) if sep else entry in allowed
        if not ok:
            named = ", ".join(controlnets) or "none"
            raise InstantStyleError(
                f"control {entry!r} is not allowed: use {' or '.join(KINDS)} (derived from the content image), "
                f"a ControlNet the server allows by name ({named}; server flag --controlnet NAME=REF), or "
                "KIND=NAME with one of those; a request never names a path or Hub id"
            )
    if req.method == "b-lora":
        raise InstantStyleError(
            "method 'b-lora' is not served over HTTP: its b_lora is a directory on the server, "
            "and a request never names a file; run it with `instantstyle generate --method "
            "b-lora --b-lora DIR`"
        )


def check_inputs(req: GenerateRequest, model, limits: Limits, uploads: Uploads) -> None:
    """The uploaded content/mask/control images against the request (sizes, channels, counts).

    Runs the library's own reading of the inputs (``pipelines.inputs.load_inputs``: image processing only,
    no model) so a mask of the wrong size or an RGB mask is refused before the job is queued, and
    the generation size derived from the content image is held to the size range.
    """
    from ..pipelines import needs_stylize
    from ..pipelines.inputs import load_inputs

    if req.method != "instantstyle" or not needs_stylize(req):
        return
    kwargs = uploads.kwargs(req)
    kwargs["style_masks"] = kwargs.pop("style_mask_images")
    (
        kwargs.pop("composition_image"),
        kwargs.pop("negative_style_image"),
    )  # style-side images: decoded, not resized
    inputs = load_inputs(model, req, **kwargs)
    for what, value in (("width", inputs.width), ("height", inputs.height)):
        if not limits.min_size <= value <= limits.max_size:
            raise InstantStyleError(
                f"{what} is {value} (from the content image's aspect ratio), outside the "
                f"allowed range {limits.min_size}...{limits.max_size}; crop the content image "
                "or give width and height (server flags --min-size/--max-size)"
            )
    check_cost(req, inputs.width, inputs.height, limits)
