"""The Ray engine: ``instantstyle batch --engine ray [--address ...]`` on a Ray cluster, with Ray Data.

1. The driver reads the manifest, gives the rows their ids, drops the finished ones and groups
   the rest into pipeline calls (``plan.units``), as every engine.
2. The calls become a Ray dataset streamed through ``map_batches`` into a pool of actors
   (``ActorPoolStrategy``): one actor per device (``--workers``, default one per GPU of the
   cluster, else 1), each holding its model, loaded once in its constructor. An actor writes its
   rows' images and its own result log itself (the output folder must be on storage every node
   sees, e.g. NFS or a mounted bucket) and returns the result lines.
3. The driver shows progress as results stream back, then merges the logs into the tables.

Works with ``ray start --head`` on one machine, a multi-node cluster (``--address ray://HOST:10001``
or ``RAY_ADDRESS``) or, with neither, a local Ray started for the run. Ray is the optional extra
``pip install 'instantstyle[batch]'``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ...errors import InstantStyleError
from ..manifest import Row
from ..plan import units
from ..results import Summary
from ..runner import ModelOptions, Worker
from . import BatchOptions, Progress, chain, finish, load_rows, split_finished


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise InstantStyleError(
            "--engine ray needs Ray Data: pip install 'instantstyle[batch]' (or run without --engine ray)"
        ) from None
    return ray


def encode_call(unit: list[Row]) -> str:
    """A pipeline call as JSON (what the dataset carries): each row's id, position and request."""
    return json.dumps(
        [
            {
                "id": r.id,
                "index": r.index,
                "request": r.request.model_dump(mode="json") if r.request is not None else None,
                "error": r.error,
            }
            for r in unit
        ]
    )


def decode_call(text: str) -> list[Row]:
    from ...config import make_request

    rows = []
    for item in json.loads(text):
        row = Row(item["index"], {}, error=item["error"], id=item["id"])
        if item["request"] is not None:
            try:
                row.request = make_request(flag_style=False, **item["request"])
            except InstantStyleError as exc:
                row.error = str(exc)
        rows.append(row)
    return rows


class BatchActor:
    """A Ray Data actor: the model, loaded once; runs the calls of each batch it is given."""

    def __init__(self, model: dict, out: str, retries: int, device: str | None):
        options = ModelOptions(**model)
        start = time.perf_counter()
        self.model = options.load(device)
        self.load_seconds = time.perf_counter() - start  # reported with the first batch
        self.worker = Worker(
            self.model, Path(out), f"ray-{socket.gethostname()}-{os.getpid()}", retries=retries
        )

    def __call__(self, batch: dict) -> dict:
        records = []
        for text in batch["call"]:
            records += self.worker.run_call(decode_call(text))
        self.worker.log.close()  # reopened on the next batch: every line is on disk now
        load, self.load_seconds = self.load_seconds, 0.0
        return {"record": [json.dumps(r) for r in records], "load": [load] + [0.0] * (len(records) - 1)}


def _connect(ray, address: str | None) -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, configure_logging=False, log_to_driver=True)


def _workers(ray, wanted: int | None, use_gpu: bool) -> int:
    if wanted:
        return wanted
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return max(gpus, 1) if use_gpu else 1


def run_ray(
    manifest: str | Path | list[Row],
    options: BatchOptions,
    *,
    on_record: Callable[[dict], None] | None = None,
) -> Summary:
    ray = _ray()
    out = Path(options.out).resolve()
    # 1. Rows, ids, what is left, pipeline calls (on the driver).
    rows = load_rows(manifest, options)
    todo, skipped = split_finished(rows, out)
    calls = units(todo, options.batch_size)
    summary = Summary(rows=len(rows), skipped=skipped)
    if calls:
        # 2. One actor per device, each holding its model; calls streamed through map_batches.
        _connect(ray, options.address)
        device = options.model.device
        use_gpu = device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
        n = _workers(ray, options.workers, use_gpu)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts images
        dataset = ray.data.from_items([{"call": encode_call(unit)} for unit in calls])
        results = dataset.map_batches(
            BatchActor,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=n),
            num_gpus=1 if use_gpu else 0,
            num_cpus=1,
            fn_constructor_kwargs={
                "model": asdict(options.model),
                "out": str(out),
                "retries": options.retries,
                "device": "cuda" if use_gpu else (device or "cpu"),
            },
        )
        # 3. Progress as results stream back; then the tables.
        progress = Progress(
            sum(r.num_images for r in todo), options.progress, desc=f"batch ({n} Ray workers)"
        )
        callback = chain(progress, on_record)
        records: list[dict] = []
        start = time.perf_counter()
        try:
            for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                summary.load_seconds = max(summary.load_seconds, *map(float, batch["load"]))
                for text in batch["record"]:
                    record = json.loads(str(text))
                    records.append(record)
                    callback(record)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            # the actors load their models in parallel, inside the stream: the slowest load is not generation
            summary.seconds = max(time.perf_counter() - start - summary.load_seconds, 1e-9)
            progress.close()
        summary.generated = sum(r["status"] == "ok" for r in records)
        summary.images = sum(r["images"] for r in records)
        summary.devices = sorted({f"{n} x {r['device']}" for r in records if r["status"] == "ok"})
    return finish(rows, out, summary)
