"""Reading a batch manifest: one ``GenerateRequest`` per row, or a product spec expanded.

Formats, by file name:

- ``.jsonl``: one JSON object per line, the fields of ``GenerateRequest`` (``generate``'s
  schema); blank lines are skipped.
- ``.csv``: a header of field names, one row per line. List fields (``style``,
  ``style_weights``, ``control``, ...) take a JSON list (``["a.png", "b.png"]``) or one value;
  an empty cell leaves the field at its default.
- ``.parquet``: one column per field (lists as list columns); a null leaves the default.
- ``.json``: a list of row objects, or a *product spec* (an object) expanded in a fixed order,
  styles x prompts x settings x seeds (seeds innermost, so rows that differ only by seed sit
  together and can be batched)::

      {"defaults": {"steps": 30},
       "styles":   ["a.png", ["b.png", "c.png"], {"style": ["d.png"], "scale": 0.8}],
       "prompts":  ["a cat", {"prompt": "a dog", "content_prompt": "a photo"}],
       "settings": [{"mode": "style"}, {"mode": "style+layout"}],
       "seeds":    [1, 2, 3]}          # or a count: 3 -> seeds 0, 1, 2

Relative image paths (``style``, ``content``, ``mask``, ``style_masks``, ``control_image``,
``composition``, ``negative_style``, ``b_lora``, ``loras``) are relative to the manifest's folder; URLs are
refused (download first). A row without a seed gets one derived from its content, so a rerun
draws the same picture. A row that cannot be read or validated becomes a failed row with its
one-line error; it never stops the others. Problems with the file itself (missing, unknown
format, an unknown CSV column) are one-line ``InstantStyleError``s.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path

from ..config import GenerateRequest, make_request
from ..errors import InstantStyleError

FORMATS = (".jsonl", ".csv", ".parquet", ".json")
# Fields that name input files, read relative to the manifest.
PATH_FIELDS = (
    "style",
    "content",
    "mask",
    "style_masks",
    "control_image",
    "composition",
    "negative_style",
    "b_lora",
    "loras",
)
PRODUCT_AXES = ("styles", "prompts", "settings", "seeds")  # expansion order, seeds innermost
PRODUCT_KEYS = ("defaults", *PRODUCT_AXES)
SEED_RANGE = 2**31  # derived seeds are below this, as the CLI's random ones


@dataclass
class Row:
    """One manifest row: the request it asks for, or why it cannot run."""

    index: int  # position in the manifest (expansion order for a product spec)
    fields: dict  # the row as read, paths as written
    request: GenerateRequest | None = None
    error: str | None = None  # one line: why the row cannot run
    id: str = ""  # content-derived, set by ``ids.assign_ids``

    @property
    def num_images(self) -> int:
        return self.request.num_images if self.request is not None else 1


def read_manifest(path: str | Path) -> list[Row]:
    """The rows of the manifest at ``path``, each validated into a ``GenerateRequest`` (or failed)."""
    path = Path(path)
    if not path.is_file():
        raise InstantStyleError(
            f"manifest '{path}' does not exist; give a .jsonl, .csv, .parquet or .json file"
        )
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InstantStyleError(
            f"manifest '{path}': unknown format {suffix or '(no suffix)'!r}; use one of {', '.join(FORMATS)}"
        )
    raw = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet, ".json": _read_json}[suffix](
        path
    )
    rows = []
    for index, item in enumerate(raw):
        if isinstance(item, str):  # a line that was not a JSON object: its error
            rows.append(Row(index, {}, error=item))
        else:
            rows.append(build_row(index, item, path.parent))
    if not rows:
        raise InstantStyleError(f"manifest '{path}' has no rows")
    return rows


def build_row(index: int, fields: dict, base_dir: Path) -> Row:
    """Validate, fill a derived seed, resolve the input paths."""
    try:
        request = make_request(flag_style=False, **fields)
        resolved = resolve_paths({name: getattr(request, name) for name in PATH_FIELDS}, base_dir)
    except InstantStyleError as exc:
        return Row(index, fields, error=str(exc))
    if request.seed is None:
        resolved["seed"] = derived_seed(request)
    return Row(index, fields, request=request.model_copy(update=resolved))


def derived_seed(request: GenerateRequest) -> int:
    """A seed from the row's content (its request, paths as written, without the seed): same row,
    same seed, in any manifest format and wherever the folder is."""
    text = json.dumps(
        request.model_dump(mode="json", exclude_defaults=True, exclude={"seed"}), sort_keys=True
    )
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16) % SEED_RANGE


def resolve_paths(fields: dict, base_dir: Path) -> dict:
    """The row with its relative input paths made relative to ``base_dir`` (the manifest's folder)."""
    out = dict(fields)
    for name in PATH_FIELDS:
        value = out.get(name)
        if isinstance(value, list):
            out[name] = [_resolve(v, base_dir, name) for v in value]
        elif value is not None:
            out[name] = _resolve(value, base_dir, name)
    return out


def _resolve(value, base_dir: Path, name: str):
    if not isinstance(value, str) or not value or (name == "style" and value.startswith("@")):
        return value  # saved styles, None, and wrong types (the schema reports those)
    if name == "loras":  # PATH[:SCALE]: the path part is relative to the manifest
        from ..loras import join_entry, split_entry

        path, scale = split_entry(value)
        return join_entry(_resolve(path, base_dir, "b_lora"), scale)
    if "://" in value:
        raise InstantStyleError(
            f"{name} {value!r} is a URL; manifests name local files (relative to the "
            "manifest's folder): download it first"
        )
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = base_dir / path
    if name in ("b_lora", "loras") and not candidate.exists():
        return value  # a LoRA given as a Hub id or relative to the working directory
    return str(candidate)


# ---------------------------------------------------------------- formats


def _read_jsonl(path: Path) -> list[dict | str]:
    rows: list[dict | str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(f"line {number} is not JSON ({exc.msg} at column {exc.colno}); fix the line")
            continue
        rows.append(
            item if isinstance(item, dict) else f"line {number} is not a JSON object of request fields"
        )
    return rows


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _check_columns(path, reader.fieldnames or [])
        return [{k: _csv_value(k, v) for k, v in row.items() if v not in (None, "")} for row in reader]


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InstantStyleError(
            f"manifest '{path}' is Parquet, which needs pyarrow: pip install "
            "'instantstyle[batch]' (or give a .jsonl or .csv manifest)"
        ) from None
    table = pq.read_table(path)
    _check_columns(path, table.column_names)
    return [{k: v for k, v in row.items() if not _missing(v)} for row in table.to_pylist()]


def _read_json(path: Path) -> list[dict | str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InstantStyleError(
            f"manifest '{path}' is not JSON ({exc.msg}, line {exc.lineno}); fix it"
        ) from None
    if isinstance(data, list):
        return [
            item if isinstance(item, dict) else f"entry {i} is not a JSON object of request fields"
            for i, item in enumerate(data)
        ]
    if isinstance(data, dict):
        return expand_product(data, str(path))
    raise InstantStyleError(f"manifest '{path}' must hold a list of rows or a product spec object")


def expand_product(spec: dict, where: str = "product spec") -> list[dict]:
    """The rows of a product spec: defaults + one entry of each axis, styles x prompts x settings x seeds."""
    unknown = [k for k in spec if k not in PRODUCT_KEYS]
    if unknown:
        raise InstantStyleError(
            f"{where}: unknown key {unknown[0]!r}{_suggest(unknown[0], PRODUCT_KEYS)}; "
            f"a product spec has {', '.join(PRODUCT_KEYS)}"
        )
    defaults = spec.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InstantStyleError(f"{where}: 'defaults' must be an object of request fields")
    axes = [_axis(spec, name, where) for name in PRODUCT_AXES]
    rows = [dict(defaults)]
    for name, entries in zip(PRODUCT_AXES, axes, strict=True):
        expanded = []
        for row in rows:
            for entry in entries:
                clash = sorted(set(entry) & (set(row) - set(defaults)))
                if clash:
                    raise InstantStyleError(
                        f"{where}: field {clash[0]!r} is set by '{name}' and by an earlier "
                        "axis; set it in one place"
                    )
                expanded.append({**row, **entry})
        rows = expanded
    return rows


def _axis(spec: dict, name: str, where: str) -> list[dict]:
    """One axis as a list of field dicts (a missing axis is one empty entry)."""
    value = spec.get(name)
    if value is None:
        return [{}]
    if name == "seeds" and isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise InstantStyleError(f"{where}: 'seeds' {value}: give a count >= 1 or a list of seeds")
        value = list(range(value))
    if not isinstance(value, list) or not value:
        raise InstantStyleError(f"{where}: '{name}' must be a non-empty list")
    field = {"styles": "style", "prompts": "prompt", "seeds": "seed"}.get(name)
    entries = []
    for entry in value:
        if isinstance(entry, dict):
            entries.append(dict(entry))
        elif field == "style":
            entries.append({"style": entry if isinstance(entry, list) else [entry]})
        elif field is not None:
            entries.append({field: entry})
        else:
            raise InstantStyleError(
                f"{where}: each of 'settings' is an object of request fields (got {entry!r})"
            )
    return entries


def _check_columns(path: Path, names: list[str]) -> None:
    fields = list(GenerateRequest.model_fields)
    for name in names:
        if name not in fields:
            raise InstantStyleError(
                f"manifest '{path}': unknown column {name!r}{_suggest(name, fields)}; columns "
                "are the fields of `instantstyle generate` (e.g. prompt, style, seed, steps)"
            )


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _takes_list(name: str) -> bool:
    annotation = GenerateRequest.model_fields[name].annotation
    kinds = {typing.get_origin(a) or a for a in (annotation, *typing.get_args(annotation))}
    return bool(kinds & {list, tuple})


def _csv_value(name: str, text: str):
    """A CSV cell: list fields take a JSON list or one value; the schema converts the rest."""
    if name in GenerateRequest.model_fields and _takes_list(name):
        if text.lstrip().startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text  # the schema reports it
        return text if name == "style_window" else [text]
    return text


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
