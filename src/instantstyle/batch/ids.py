"""Stable row ids from content: the same row gives the same id on every run, a changed row a new one.

A row's id is the SHA-256 (first 16 hex digits) of:

- its request without the fields left at their defaults (so a release that adds a field with a
  default keeps every id), with each input file replaced by the SHA-256 of its bytes: moving the
  images together with the manifest keeps the ids, editing an image changes its rows' ids;
- the model it runs on, as the user named it (``runner.ModelOptions.fingerprint``).

A row that failed to validate is identified by its fields as written. File hashes are cached
by (path, size, mtime) in ``OUT/.batch/file-hashes.json`` so a resume does not re-read 50,000
product photos.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .manifest import PATH_FIELDS, Row

ID_LENGTH = 16


class FileHashes:
    """SHA-256 of input files, cached by (absolute path, size, mtime_ns)."""

    def __init__(self, store: Path | None = None):
        self.store = store
        self._known: dict[str, str] = {}
        self._dirty = False
        if store is not None and store.is_file():
            try:
                self._known = json.loads(store.read_text())
            except (OSError, ValueError):
                self._known = {}  # a damaged cache costs a re-hash

    def __call__(self, path: str) -> str:
        p = Path(path)
        try:
            stat = p.stat()
        except OSError:
            return f"missing:{path}"
        if p.is_dir():
            return f"dir:{path}"  # a B-LoRA folder: named, not hashed
        key = f"{p.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in self._known:
            digest = hashlib.sha256()
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._known[key] = digest.hexdigest()
            self._dirty = True
        return self._known[key]

    def save(self) -> None:
        if self.store is None or not self._dirty:
            return
        from ..files import atomic_write_bytes

        self.store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.store, json.dumps(self._known).encode())
        self._dirty = False


def row_key(row: Row, model: dict, hashes: FileHashes) -> dict:
    """What the id is the hash of (see the module docstring)."""
    if row.request is None:
        return {"invalid": row.fields, "model": model}
    fields = row.request.model_dump(mode="json", exclude_defaults=True)
    for name in PATH_FIELDS:
        value = fields.get(name)
        if isinstance(value, list):
            fields[name] = [_content(v, name, hashes) for v in value]
        elif value is not None:
            fields[name] = _content(value, name, hashes)
    return {"request": fields, "model": model}


def _content(value, name: str, hashes: FileHashes):
    if not isinstance(value, str) or (name == "style" and value.startswith("@")):
        return value
    if name == "loras":  # PATH[:SCALE]: the file's content and the scale
        from ..loras import join_entry, split_entry

        path, scale = split_entry(value)
        return join_entry(_content(path, "b_lora", hashes), scale)
    if name == "b_lora" and not os.path.exists(value):
        return value  # a Hub id
    return "sha256:" + hashes(value)


def row_id(row: Row, model: dict, hashes: FileHashes) -> str:
    text = json.dumps(row_key(row, model, hashes), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def assign_ids(rows: list[Row], model: dict, hashes: FileHashes | None = None) -> list[Row]:
    """Set every row's ``id``; returns the rows."""
    hashes = hashes or FileHashes()
    for row in rows:
        row.id = row_id(row, model, hashes)
    hashes.save()
    return rows
