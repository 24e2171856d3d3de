"""Command-line flags and web-UI widgets generated from a pydantic schema: one declaration per field.

A field's name, type, description, bounds (``ge``/``gt``/``le``/``lt``), choices (``Literal``) and
default are read from the model; what only a front end needs rides on the field as
``json_schema_extra=frontend(...)`` (it shows in the JSON schema as ``x-frontend``):

- ``flag``: the flag when it is not ``--field-name`` (``--no-NAME`` makes a store-false switch);
- ``metavar``, ``repeat`` (the flag is given once per value, e.g. ``--style A --style B``),
  ``group`` (a key the front end maps to an argument group / accordion), ``cli_help`` (extra CLI text);
- ``widget`` (``radio``, ``image``, ``images``, ``mask``, ``masks``), ``label``, ``step``, ``elem_id``;
- ``not_in_ui`` / ``not_in_cli``: the reason a field has no widget / no flag (e.g. it names a server path).

Leaf module: of ours it imports only ``errors`` (``config`` and ``training.config`` use it).
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable, Iterable

from .errors import InstantStyleError

KEY = "x-frontend"


def frontend(**meta) -> dict:
    """``json_schema_extra`` for a field: front-end metadata (unset keys left out)."""
    return {KEY: {k: v for k, v in meta.items() if v is not None}}


def meta(field) -> dict:
    extra = field.json_schema_extra
    return dict(extra.get(KEY, {})) if isinstance(extra, dict) else {}


def _unwrap(annotation):
    """``X | None`` -> ``X`` (the type the field takes when it is given)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def kind(field) -> str:
    """bool | int | float | str | choice | list | tuple (of the field's type, ``None`` aside)."""
    ann = _unwrap(field.annotation)
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return "choice"
    if origin in (list, tuple):
        return origin.__name__
    return ann.__name__ if ann in (bool, int, float, str) else "str"


def choices(field) -> tuple | None:
    ann = _unwrap(field.annotation)
    return typing.get_args(ann) if typing.get_origin(ann) is typing.Literal else None


def item_kind(field) -> str:
    """The type of a list field's items (``float`` for ``list[float]``)."""
    args = typing.get_args(_unwrap(field.annotation))
    first = _unwrap(args[0]) if args else str
    return first.__name__ if first in (bool, int, float, str) else "str"


def bounds(field) -> tuple[float | None, float | None]:
    """(lower, upper) from ``ge``/``gt`` and ``le``/``lt``."""
    lo = hi = None
    for item in field.metadata:
        for attr in ("ge", "gt"):
            if getattr(item, attr, None) is not None:
                lo = getattr(item, attr)
        for attr in ("le", "lt"):
            if getattr(item, attr, None) is not None:
                hi = getattr(item, attr)
    return lo, hi


def range_text(field) -> str:
    """``[0, 10]``, ``(0, 1]``... or "" for a field without bounds."""
    lo, hi = bounds(field)
    if lo is None and hi is None:
        return ""
    open_lo = any(getattr(m, "gt", None) is not None for m in field.metadata)
    open_hi = any(getattr(m, "lt", None) is not None for m in field.metadata)
    left = "(" if open_lo else "["
    right = ")" if open_hi else "]"

    def num(v, missing: str) -> str:
        return missing if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    return f"{left}{num(lo, '-inf')}, {num(hi, 'inf')}{right}"


def default(field):
    return None if field.is_required() else field.get_default(call_default_factory=True)


def default_text(field) -> str:
    value = default(field)
    if field.is_required() or value in (None, [], ""):
        return ""
    if isinstance(value, tuple):
        value = ":".join(f"{v:g}" for v in value)
    return f" (default: {value})"


def flag_name(name: str, field) -> str:
    return meta(field).get("flag") or "--" + name.replace("_", "-")


# ---------------------------------------------------------------------- command-line flags


def flag_kwargs(name: str, field, *, unset=argparse.SUPPRESS) -> dict:
    """``add_argument`` keyword arguments for one field; flags not given hold ``unset``."""
    m, k = meta(field), kind(field)
    flag = flag_name(name, field)
    kw: dict = {"dest": name, "default": unset}
    if k == "bool":
        kw["action"] = "store_false" if flag.startswith("--no-") else argparse.BooleanOptionalAction
    elif k == "list":
        if m.get("repeat"):
            kw["action"] = "append"
        else:
            kw["nargs"] = "+"
        kw["metavar"] = m.get("metavar", "F" if item_kind(field) == "float" else "V")
        if unset is None:
            kw["default"] = []
    elif k == "choice":
        kw["choices"] = choices(field)
    else:
        kw["metavar"] = m.get("metavar") or {"int": "N", "float": "F"}.get(k) or name.split("_")[-1].upper()
    return kw


def flag_help(name: str, field, note: str | None = None) -> str:
    """Description, range, ``cli_help`` and the default (or ``note`` in its place)."""
    rng = range_text(field)
    text = (field.description or "") + (f" Range {rng}." if rng else "")
    extra = meta(field).get("cli_help")
    text += f" {extra}" if extra else ""
    return text + (default_text(field) if note is None else note)


def add_flags(
    parser,
    model,
    names: Iterable[str] | None = None,
    *,
    unset=argparse.SUPPRESS,
    group: Callable[[str], object] | None = None,
    note: Callable[[str], str | None] | None = None,
    overrides: dict[str, dict] | None = None,
) -> dict[str, argparse.Action]:
    """One flag per field of ``model`` (all, or ``names`` in that order), on ``group(name)`` or
    ``parser``. ``note(name)`` may replace the shown default; ``overrides[name]`` changes the
    ``add_argument`` arguments (e.g. a custom action). Fields marked ``not_in_cli`` get none."""
    made = {}
    for name in names if names is not None else model.model_fields:
        field = model.model_fields[name]
        if "not_in_cli" in meta(field):
            continue
        kw = flag_kwargs(name, field, unset=unset)
        kw["help"] = flag_help(name, field, note(name) if note else None).replace("%", "%%")
        kw.update((overrides or {}).get(name, {}))
        target = group(name) if group else parser
        made[name] = target.add_argument(flag_name(name, field), **kw)
    return made


def given(args, model, names: Iterable[str] | None = None) -> dict:
    """The fields a parsed namespace carries a value for (``None`` and ``[]`` mean "not given")."""
    values = {n: getattr(args, n, None) for n in (names if names is not None else model.model_fields)}
    return {n: v for n, v in values.items() if v is not None and v != []}


# ---------------------------------------------------------------------- web-UI widgets


def widget(name: str, field, *, limits: dict | None = None) -> tuple[str, dict]:
    """(component kind, its arguments) for one field: a slider for a bounded number with a
    default (on the slider's grid), a number box for one whose default is "unset", a dropdown (or
    radio) for choices, a checkbox for a bool, a text box for text and lists, an upload for images.
    ``limits[name] = (lo, hi)`` narrows the schema's range to a server's limits."""
    m, k = meta(field), kind(field)
    value = default(field)
    kw = {
        "label": m.get("label", name.replace("_", " ").capitalize()),
        "info": field.description or "",
        "elem_id": m.get("elem_id", name.replace("_", "-")),
    }
    if m.get("widget") in ("image", "mask", "images", "masks"):
        return m["widget"], kw
    if k == "bool":
        if value is not None:
            return "checkbox", {**kw, "value": value}
        return "dropdown", {**kw, "choices": ["default", "on", "off"], "value": "default"}
    if k == "choice":
        return m.get("widget", "dropdown"), {**kw, "choices": list(choices(field)), "value": value}
    if k in ("int", "float"):
        return _number_widget(name, field, k, value, kw, limits)
    if k == "tuple":
        return "textbox", {**kw, "value": to_widget(name, field, value)}
    if k == "str":
        kw.update((key, m[key]) for key in ("placeholder", "lines") if key in m)
        size = next(
            (getattr(x, "max_length", None) for x in field.metadata if getattr(x, "max_length", None)), None
        )
        if size is not None and (limits or {}).get(name):
            size = min(size, limits[name][1])
        return "textbox", {**kw, "value": value or "", **({"max_length": size} if size else {})}
    return "textbox", {**kw, "value": to_widget(name, field, value)}


def _number_widget(name, field, k, value, kw, limits) -> tuple[str, dict]:
    lo, hi = bounds(field)
    if limits and name in limits:
        lo = limits[name][0] if lo is None else max(lo, limits[name][0])
        hi = limits[name][1] if hi is None else min(hi, limits[name][1])
    step = meta(field).get("step", 1 if k == "int" else 0.05)
    on_grid = (
        value is not None and lo is not None and abs((value - lo) / step - round((value - lo) / step)) < 1e-6
    )
    if on_grid and hi is not None:
        return "slider", {**kw, "minimum": lo, "maximum": hi, "value": min(max(value, lo), hi), "step": step}
    # "number": an optional number (empty = the default); the UI renders it as a text box.
    return "number", {
        **kw,
        "minimum": lo,
        "maximum": hi,
        "value": value,
        "placeholder": meta(field).get("placeholder", "default"),
    }


def parse_numbers(text: str | None, what: str = "weights") -> list[float] | None:
    """Numbers typed as text: ``0.7, 0.3`` (commas or semicolons) or a JSON list; empty -> None."""
    if text is None or not str(text).strip():
        return None
    text = str(text).strip()
    try:
        values = (
            json.loads(text)
            if text.startswith("[")
            else [x for x in text.replace(";", ",").split(",") if x.strip()]
        )
        return [float(v) for v in values]
    except (ValueError, TypeError):
        raise InstantStyleError(
            f"{what} {text!r}: give numbers separated by commas, e.g. 0.7, 0.3 (or a JSON list, [0.7, 0.3])"
        ) from None


def from_widget(name: str, field, value):
    """A widget's value as the request takes it; "" / None / an empty list mean "not given"."""
    k = kind(field)
    if value is None or value == "" or value == []:
        return None
    if k == "bool" and default(field) is None:
        return {"on": True, "off": False}.get(value)
    if k in ("int", "float"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InstantStyleError(
                f"{name.replace('_', ' ')} {value!r}: give a number, or leave it empty for the default"
            ) from None
        return (
            int(number) if k == "int" and number.is_integer() else number
        )  # a fraction: the schema refuses it
    if k == "list" and item_kind(field) == "float":
        return parse_numbers(value, name.replace("_", " "))
    return value


def to_widget(name: str, field, value):
    """The inverse of ``from_widget``: a request value (e.g. from an image's parameters) for its widget."""
    k = kind(field)
    if k == "bool" and default(field) is None:
        return "default" if value is None else ("on" if value else "off")
    if value is None:
        return "" if k in ("str", "tuple", "list") else None
    if k == "list" and item_kind(field) == "float":
        return ", ".join(f"{float(v):g}" for v in value)
    if k == "list" and item_kind(field) == "int":  # e.g. custom timesteps: "999, 749, 499, 249"
        return ", ".join(str(int(v)) for v in value)
    if k == "tuple":
        return ":".join(f"{float(v):g}" for v in value)
    return value
