"""The accelerate engine: ``accelerate launch -m instantstyle batch ...`` (or ``torchrun``), one
process per GPU on any number of nodes (CPU processes talk over gloo).

1. Every rank reads the manifest and gives the rows their ids; rank 0 reads the results so far
   and broadcasts which rows are finished, so all ranks agree on what is left.
2. Each rank takes its contiguous part of the rows left (``plan.shard``: deterministic), loads
   the model once on its own device and runs its part, writing images and its own result log.
3. After a barrier, rank 0 gathers the ranks' counts, merges the logs into the tables and
   returns the whole run's summary; the other ranks return their own part's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from ..manifest import Row
from ..plan import shard, units
from ..results import Summary, is_finished, read_records
from ..runner import Worker
from . import BatchOptions, Progress, chain, finish, load_rows

# The final barrier waits for the slowest rank; parts are balanced, but give a long job room.
BARRIER_TIMEOUT = timedelta(hours=24)


def _state(options: BatchOptions):
    import torch
    from accelerate import PartialState

    device = options.model.device or ""
    cpu = (
        device == "cpu"
        or not torch.cuda.is_available()
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    )
    return PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT), cpu


def run_accelerate(
    manifest: str | Path | list[Row],
    options: BatchOptions,
    *,
    on_record: Callable[[dict], None] | None = None,
) -> Summary:
    from accelerate.utils import broadcast_object_list, gather_object

    out = Path(options.out)
    state, cpu = _state(options)
    rank, world = state.process_index, state.num_processes
    # 1. Rows and ids everywhere; what is finished, from rank 0.
    rows = load_rows(manifest, options)
    finished = [None]
    if state.is_main_process:
        records = read_records(out)
        finished = [sorted(row.id for row in rows if is_finished(records.get(row.id), out))]
    broadcast_object_list(finished)
    done = set(finished[0])
    # 2. This rank's part of what is left, on this rank's device.
    mine = shard([row for row in rows if row.id not in done], rank, world)
    calls = units(mine, options.batch_size)
    own = {
        "generated": 0,
        "images": 0,
        "seconds": 0.0,
        "load_seconds": 0.0,
        "device": None,
        "interrupted": False,
    }
    if calls:
        start = time.perf_counter()
        model = options.model.load("cpu" if cpu else str(state.device))
        own["load_seconds"] = time.perf_counter() - start
        own["device"] = f"{model.device}"
        progress = Progress(
            sum(r.num_images for r in mine),
            options.progress and state.is_main_process,
            desc=f"batch (rank 0 of {world})",
        )
        records: list[dict] = []
        worker = Worker(
            model,
            out,
            f"rank{rank}",
            retries=options.retries,
            on_record=chain(records.append, progress, on_record),
        )
        start = time.perf_counter()
        try:
            worker.run(calls)
        except KeyboardInterrupt:
            own["interrupted"] = True
        finally:
            own["seconds"] = time.perf_counter() - start
            progress.close()
            own["generated"] = sum(r["status"] == "ok" for r in records)
            own["images"] = sum(r["images"] for r in records)
    # 3. Everyone done: rank 0 merges and summarises the whole run.
    state.wait_for_everyone()
    parts = gather_object([own])
    if not state.is_main_process:
        return Summary(
            rows=len(mine),
            generated=own["generated"],
            images=own["images"],
            seconds=own["seconds"],
            load_seconds=own["load_seconds"],
            devices=[own["device"]] if own["device"] else [],
            interrupted=own["interrupted"],
            coordinator=False,
        )
    summary = Summary(
        rows=len(rows),
        skipped=len(done),
        generated=sum(p["generated"] for p in parts),
        images=sum(p["images"] for p in parts),
        seconds=max(p["seconds"] for p in parts),
        load_seconds=max(p["load_seconds"] for p in parts),
        devices=[f"rank {i}: {p['device']}" for i, p in enumerate(parts) if p["device"]],
        interrupted=any(p["interrupted"] for p in parts),
    )
    return finish(rows, out, summary)
