"""Where the workers run: ``local`` (this process), ``accelerate`` (one process per GPU under
``accelerate launch`` / ``torchrun``, any number of nodes), ``ray`` (Ray Data actors on a cluster).

Every engine does the same numbered steps: read the manifest and give each row its id; drop the
rows already finished (their result says ok and their images exist); order and batch the rest
(``plan``); run them on workers that hold the model; merge the results into the tables; summarise.
``auto`` picks ``accelerate`` when the process was started by a distributed launcher
(``WORLD_SIZE`` > 1) and ``local`` otherwise; Ray is always asked for by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InstantStyleError
from ..ids import FileHashes, assign_ids
from ..manifest import Row, read_manifest
from ..plan import unique
from ..results import STATE_DIR, Summary, is_finished, read_records, table, write_tables
from ..runner import ModelOptions

ENGINES = ("auto", "local", "accelerate", "ray")


@dataclass
class BatchOptions:
    """How a run is carried out (the manifest says what to make)."""

    out: Path
    batch_size: int = 1  # images per pipeline call, for rows equal but for the seed
    retries: int = 1  # extra attempts for a failing call
    engine: str = "auto"
    address: str | None = None  # Ray cluster address (default: RAY_ADDRESS, else a local Ray)
    workers: int | None = None  # Ray actors (default: one per GPU of the cluster, else 1)
    progress: bool = True
    model: ModelOptions = field(default_factory=ModelOptions)

    def check(self) -> None:
        if self.engine not in ENGINES:
            raise InstantStyleError(f"--engine {self.engine!r}: use one of {', '.join(ENGINES)}")
        if self.batch_size < 1:
            raise InstantStyleError(f"--batch-size {self.batch_size}: give 1 or more images per call")
        if self.retries < 0:
            raise InstantStyleError(f"--retries {self.retries}: give 0 or more")
        if self.workers is not None and self.workers < 1:
            raise InstantStyleError(f"--workers {self.workers}: give 1 or more")
        if self.address and self.engine != "ray":
            raise InstantStyleError("--address is the Ray cluster's; add --engine ray")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise InstantStyleError(f"--out '{out}' is a file; give a folder (it is created if missing)")


def resolve_engine(engine: str) -> str:
    if engine != "auto":
        return engine
    return "accelerate" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "local"


def load_rows(manifest: str | Path | list[Row], options: BatchOptions) -> list[Row]:
    """1. The manifest's unique rows with their ids."""
    rows = read_manifest(manifest) if not isinstance(manifest, list) else manifest
    out = Path(options.out)
    hashes = FileHashes(out / STATE_DIR / "file-hashes.json" if out.is_dir() else None)
    return unique(assign_ids(rows, options.model.fingerprint(), hashes))


def split_finished(rows: list[Row], out: Path) -> tuple[list[Row], int]:
    """2. The rows still to make, and how many were finished before."""
    records = read_records(out)
    todo = [row for row in rows if not is_finished(records.get(row.id), out)]
    return todo, len(rows) - len(todo)


def finish(rows: list[Row], out: Path, summary: Summary) -> Summary:
    """5. Merge every worker's results into the tables and count them."""
    lines = table(rows, read_records(out))
    summary.tables = write_tables(out, lines)
    summary.absorb(lines)
    return summary


class Progress:
    """A progress bar in images, with images/s and the time left (tqdm's rate and ETA)."""

    def __init__(self, total: int, enabled: bool = True, desc: str = "batch"):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)
        self.failed = 0

    def __call__(self, record: dict) -> None:
        self.failed += record["status"] != "ok"
        self.bar.update(record.get("images") or record.get("planned") or 1)
        if self.failed:
            self.bar.set_postfix(failed=self.failed, refresh=False)

    def close(self) -> None:
        self.bar.close()


def chain(*callbacks):
    """One callback calling each of ``callbacks`` that is not None."""
    live = [c for c in callbacks if c is not None]

    def call(record: dict) -> None:
        for callback in live:
            callback(record)

    return call


def run_batch(
    manifest: str | Path | list[Row],
    options: BatchOptions,
    *,
    model=None,
    on_record: Callable[[dict], None] | None = None,
) -> Summary:
    """Run a manifest; returns the summary (``summary.failed`` > 0 when some rows failed).

    ``model`` is an already loaded ``InstantStyle`` for the local engine (otherwise each worker
    loads its own from ``options.model``); ``on_record`` sees every result as it is written.
    """
    options.check()
    engine = resolve_engine(options.engine)
    Path(options.out).mkdir(parents=True, exist_ok=True)
    if engine == "local":
        from .local import run_local

        return run_local(manifest, options, model=model, on_record=on_record)
    if model is not None:
        raise InstantStyleError(f"engine {engine} loads a model per worker; pass no model")
    if engine == "accelerate":
        from .accelerate import run_accelerate

        return run_accelerate(manifest, options, on_record=on_record)
    from .ray import run_ray

    return run_ray(manifest, options, on_record=on_record)
