"""Batch stylization over a manifest: resumable, one model per worker, on accelerate and Ray.

``instantstyle batch MANIFEST --out DIR`` runs one ``GenerateRequest`` per manifest row (JSONL,
CSV, Parquet, or a product spec expanded deterministically; ``manifest``). Each row gets a
stable id from its content (``ids``), so a second run skips the finished rows and redoes the
changed ones. The rows are ordered and grouped by shape and batched (``plan``), run by a worker
that holds the model (``runner``), and recorded in a results table (``results``). The engines
(``engines``) place the workers: one process, one process per GPU under ``accelerate launch``,
or Ray Data actors on a cluster.

Nothing here imports torch at import time; the engines load the model when they start.
"""

from __future__ import annotations

_EXPORTS = {
    "read_manifest": ("manifest", "read_manifest"),
    "Row": ("manifest", "Row"),
    "ModelOptions": ("runner", "ModelOptions"),
    "BatchOptions": ("engines", "BatchOptions"),
    "run_batch": ("engines", "run_batch"),
    "Summary": ("results", "Summary"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'instantstyle.batch' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value
