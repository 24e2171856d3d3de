"""InstantStyle and the methods it is compared with, behind one contract, registered by name.

Every method is a module with ``run(model, req, *, style_images=None, on_step=None) -> list[Image]``:
it takes the loaded ``InstantStyle`` model (base SDXL + IP-Adapter, shared and left exactly as
found), a ``GenerateRequest`` (prompt, seed, sampling settings and the method's own options),
the style references, and returns PIL images carrying their parameters (``images.attach_metadata``).
``InstantStyle.generate`` routes every request here; InstantStyle's own method routes it on to
its task (``instantstyle.pipelines``).

This module imports no torch: the request schema consults it to validate ``method`` and the
method-specific options before any model loads.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..blocks import FAMILIES, FAMILY_LABELS, METHOD_FAMILIES
from ..errors import InstantStyleError

# The sampling fields beyond --scheduler (few-step presets, spacing, timesteps, eta): read by the
# methods that sample through pipelines.denoise.
SAMPLING_OPTIONS = ("sampling", "timestep_spacing", "timesteps", "eta")


@dataclass(frozen=True)
class Method:
    name: str
    module: str  # submodule of instantstyle.methods with ``run``
    summary: str
    paper: str
    reference: str  # what it needs from the style: "clip" (CLIP embedding), "image" (pixels), "lora"
    options: tuple[
        str, ...
    ] = ()  # GenerateRequest fields only this method (and the others listing them) reads


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "instantstyle",
            "instantstyle",
            "IP-Adapter features into the style blocks only, content subtracted",
            "arXiv 2404.02733",
            "clip",
            (
                "mode",
                "blocks",
                "content_prompt",
                "content_scale",
                "scale",
                "style_weights",
                "style_combine",
                "scheduler",
                *SAMPLING_OPTIONS,
                "layout_boost",
                "composition",
                "composition_scale",
                "negative_style",
                "negative_style_scale",
                "style_window",
            ),
        ),
        Method(
            "ip-adapter",
            "ip_adapter",
            "plain IP-Adapter: image features into every cross-attention block",
            "arXiv 2308.06721",
            "clip",
            (
                "scale",
                "style_weights",
                "style_combine",
                "scheduler",
                *SAMPLING_OPTIONS,
                "negative_style",
                "negative_style_scale",
                "style_window",
            ),
        ),
        Method(
            "style-aligned",
            "style_aligned",
            "shared self-attention with AdaIN'd queries/keys; the reference is DDIM-inverted",
            "arXiv 2312.02133",
            "image",
            (
                "reference_prompt",
                "attention_layers",
                "share_group_norm",
                "shared_score_shift",
                "inversion_offset",
                "style_description",
            ),
        ),
        Method(
            "visual-style-prompting",
            "visual_style_prompting",
            "the reference's self-attention keys/values replace the target's in late layers",
            "arXiv 2402.12974",
            "image",
            ("reference_prompt", "attention_layers", "swap_start", "swap_end", "color_calibration"),
        ),
        Method(
            "b-lora",
            "b_lora",
            "a LoRA trained on the reference; only its style block is applied",
            "arXiv 2403.14572",
            "lora",
            ("b_lora", "b_lora_scale", "scheduler"),
        ),
    )
}
DEFAULT_METHOD = "instantstyle"
# Flags as the CLI spells them, for error messages that say what to change.
_FLAG = {"blocks": "--blocks", "mode": "--mode", "b_lora": "--b-lora", "scale": "--scale"}


def check_name(name: str) -> str:
    """``name`` if it is a registered method, else a one-line error listing the valid names."""
    if name in METHODS:
        return name
    close = difflib.get_close_matches(name, METHODS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ValueError(f"unknown method {name!r}{hint}; valid methods: {', '.join(METHODS)}")


def get(name: str) -> Method:
    try:
        return METHODS[check_name(name)]
    except ValueError as exc:
        raise InstantStyleError(str(exc)) from None


def _flag(field: str) -> str:
    return _FLAG.get(field, "--" + field.replace("_", "-"))


def check_options(req) -> None:
    """Refuse a method option set for a method that does not read it (never ignore input silently).

    Called by ``GenerateRequest``'s validator; raises ``ValueError`` (pydantic turns it into one line).
    """
    method = METHODS[req.method]
    fields = type(req).model_fields
    owned = {f for m in METHODS.values() for f in m.options}
    for name in sorted(owned - set(method.options)):
        default = fields[name].get_default(call_default_factory=True)
        value = getattr(req, name)
        if value == default or (req.method == "ip-adapter" and name == "mode" and value == "full"):
            continue
        users = [m.name for m in METHODS.values() if name in m.options]
        extra = " (these methods sample with DDIM, as their papers)" if name == "scheduler" else ""
        raise ValueError(
            f"{_flag(name)} {value!r} is read only by --method {' / '.join(users)}, not by "
            f"--method {req.method}; remove it{extra}"
        )
    stylize = {
        "task": req.task not in (None, "txt2img"),
        "content": bool(req.content),
        "control": bool(req.control),
        "style_masks": bool(req.style_masks),
    }
    if req.method != DEFAULT_METHOD and any(stylize.values()):
        used = next(k for k, v in stylize.items() if v)
        raise ValueError(
            f"{_flag(used)} (stylizing a content image, regional styles) is for --method instantstyle; "
            f"--method {req.method} is text-to-image only"
        )
    if req.method == "b-lora" and not req.b_lora:
        raise ValueError(
            "--method b-lora needs --b-lora DIR, a B-LoRA trained on the style image "
            "(`instantstyle train-blora --image REF --out DIR`)"
        )
    if method.reference == "image" and not (req.reference_prompt or "").strip():
        raise ValueError(
            f"--method {req.method} needs --reference-prompt TEXT describing the style image "
            "(e.g. 'a watercolour painting of a harbour')"
        )


def run_method(
    model,
    req,
    *,
    style_images: Sequence | None = None,
    on_step: Callable[[int, int], None] | None = None,
    **images,
) -> list:
    """Generate with ``req.method`` on the loaded ``model``; images carry their parameters.

    ``images``: in-memory composition / negative style images, for the methods whose options take them."""
    method = get(req.method)
    family = getattr(model, "family", "sdxl")
    families = METHOD_FAMILIES.get(method.name, FAMILIES)
    if family not in families:
        raise InstantStyleError(
            f"--method {method.name} is implemented for {' and '.join(FAMILY_LABELS[f] for f in families)} "
            f"bases only (its authors' code), and this base is {FAMILY_LABELS[family]}; use --method "
            "instantstyle or ip-adapter"
        )
    module = importlib.import_module(f".{method.module}", __name__)
    return module.run(model, req, style_images=style_images, on_step=on_step, **images)
