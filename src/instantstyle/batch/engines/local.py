"""The local engine: every row in this process, on one model (loaded once)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..manifest import Row
from ..plan import units
from ..results import Summary
from ..runner import Worker
from . import BatchOptions, Progress, chain, finish, load_rows, split_finished


def run_local(
    manifest: str | Path | list[Row],
    options: BatchOptions,
    *,
    model=None,
    on_record: Callable[[dict], None] | None = None,
    worker_name: str = "local",
) -> Summary:
    out = Path(options.out)
    # 1. Rows and ids; 2. what is left to do; 3. pipeline calls, grouped by shape.
    rows = load_rows(manifest, options)
    todo, skipped = split_finished(rows, out)
    calls = units(todo, options.batch_size)
    summary = Summary(rows=len(rows), skipped=skipped)
    # 4. One model, every call; Ctrl-C stops after the last finished row.
    if calls:
        start = time.perf_counter()
        if model is None:
            model = options.model.load()
        summary.load_seconds = time.perf_counter() - start
        summary.devices = [str(model.device)]
        progress = Progress(sum(r.num_images for r in todo), options.progress)
        records: list[dict] = []
        worker = Worker(
            model,
            out,
            worker_name,
            retries=options.retries,
            on_record=chain(records.append, progress, on_record),
        )
        start = time.perf_counter()
        try:
            worker.run(calls)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            summary.seconds = time.perf_counter() - start
            progress.close()
            summary.generated = sum(r["status"] == "ok" for r in records)
            summary.images = sum(r["images"] for r in records)
    # 5. Tables and counts.
    return finish(rows, out, summary)
