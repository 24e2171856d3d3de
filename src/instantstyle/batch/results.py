"""What a batch run records: one result per row, appended as it finishes, merged into tables.

Each worker appends its results, one JSON line per row, to its own log
``OUT/.batch/results/WORKER.jsonl`` (one ``write`` of a whole line, then ``fsync``): a crash or a
kill can at worst leave a torn last line, which the reader skips. A row is *finished* when its
latest result says ``ok`` and all its images exist (images are written atomically before the
result). At the end the logs are merged into ``OUT/results.jsonl`` and ``OUT/results.parquet``
(written atomically), one line per manifest row, in manifest order:

``id, row, status (ok | failed | pending), output, outputs, images, seconds, device, worker,
attempts, error, finished_at``

``output`` is the first image's path relative to ``OUT`` (``outputs`` all of them); ``seconds``
is the row's share of its pipeline call; ``pending`` marks a row not run yet (an interrupted run).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic_write, atomic_write_bytes

STATE_DIR = ".batch"
COLUMNS = (
    "id",
    "row",
    "status",
    "output",
    "outputs",
    "images",
    "seconds",
    "device",
    "worker",
    "attempts",
    "error",
    "finished_at",
)


def logs_dir(out: Path) -> Path:
    return Path(out) / STATE_DIR / "results"


class ResultLog:
    """A worker's append-only result log."""

    def __init__(self, out: Path, worker: str):
        self.path = logs_dir(out) / f"{worker}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None

    def append(self, record: dict) -> None:
        if self._fd is None:  # mode 0666 minus the umask, as any new file
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            if os.fstat(self._fd).st_size and not _ends_with_newline(self.path):
                os.write(self._fd, b"\n")  # after a torn line: start a fresh one
        os.write(self._fd, (json.dumps(record, sort_keys=True) + "\n").encode())
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_records(out: Path) -> dict[str, dict]:
    """The latest result of every row id found in the workers' logs (torn lines skipped)."""
    latest: dict[str, dict] = {}
    directory = logs_dir(out)
    if not directory.is_dir():
        return latest
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if not isinstance(record, dict) or "id" not in record:
                continue
            old = latest.get(record["id"])
            if old is None or record.get("finished_at", "") >= old.get("finished_at", ""):
                latest[record["id"]] = record
    return latest


def is_finished(record: dict | None, out: Path) -> bool:
    return bool(
        record
        and record.get("status") == "ok"
        and record.get("outputs")
        and all((Path(out) / p).is_file() for p in record["outputs"])
    )


def now() -> str:
    """UTC time with microseconds: sortable, so the latest result of a row wins."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def table(rows, records: dict[str, dict]) -> list[dict]:
    """One result per unique manifest row, in manifest order (``pending`` where none was recorded)."""
    lines, seen = [], set()
    for row in rows:
        if row.id in seen:
            continue
        seen.add(row.id)
        record = records.get(row.id)
        if record is None:
            record = {"id": row.id, "status": "pending"}
        line = {name: record.get(name) for name in COLUMNS}
        line["row"] = row.index
        lines.append(line)
    return lines


def write_tables(out: Path, lines: list[dict]) -> list[Path]:
    """``results.jsonl`` and (with pyarrow) ``results.parquet`` in ``out``; the paths written."""
    out = Path(out)
    jsonl = out / "results.jsonl"
    atomic_write_bytes(jsonl, "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode())
    written = [jsonl]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        print(
            "instantstyle: warning: results.parquet needs pyarrow (pip install 'instantstyle[batch]'); "
            "wrote results.jsonl only",
            file=sys.stderr,
        )
        return written
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("row", pa.int64()),
            ("status", pa.string()),
            ("output", pa.string()),
            ("outputs", pa.list_(pa.string())),
            ("images", pa.int64()),
            ("seconds", pa.float64()),
            ("device", pa.string()),
            ("worker", pa.string()),
            ("attempts", pa.int64()),
            ("error", pa.string()),
            ("finished_at", pa.string()),
        ]
    )
    parquet = out / "results.parquet"
    with atomic_write(parquet) as tmp:
        pq.write_table(pa.Table.from_pylist(lines, schema=schema), tmp)
    return [*written, parquet]


@dataclass
class Summary:
    """What a run did (this process's view; the coordinator's covers the whole manifest)."""

    rows: int = 0  # unique rows in the manifest (or this rank's shard)
    generated: int = 0  # rows made in this run
    skipped: int = 0  # rows already finished before this run
    failed: int = 0  # rows whose latest result is a failure
    pending: int = 0  # rows not run (interrupted)
    images: int = 0  # images made in this run
    seconds: float = 0.0  # wall time of the generation (model load excluded)
    load_seconds: float = 0.0
    devices: list[str] = field(default_factory=list)
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (row, id, error)
    tables: list[Path] = field(default_factory=list)
    interrupted: bool = False
    coordinator: bool = True  # False on accelerate ranks other than 0 (their own part only)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        rate = (
            f" in {self.seconds:.1f} s ({self.images_per_second:.2f} images/s"
            f"{' on ' + ', '.join(self.devices) if self.devices else ''}; model load {self.load_seconds:.1f} s)"
            if self.images
            else ""
        )
        out = [
            f"batch: {self.rows} rows: {self.generated} generated, {self.skipped} already done, "
            f"{self.failed} failed, {self.pending} pending; {self.images} images{rate}"
        ]
        for index, row_id, error in self.failures[:20]:
            out.append(f"  failed: row {index} ({row_id}): {error}")
        if len(self.failures) > 20:
            out.append(f"  ... and {len(self.failures) - 20} more failed rows (see results.jsonl)")
        if self.tables:
            out.append("results: " + ", ".join(str(p) for p in self.tables))
        if self.interrupted or self.pending:
            out.append("interrupted: run the same command again to finish the remaining rows")
        elif self.failed:
            out.append("run the same command again to retry the failed rows")
        return out

    def absorb(self, lines: list[dict]) -> None:
        """Count the merged table: failed/pending and the failures' errors."""
        self.failed = sum(line["status"] == "failed" for line in lines)
        self.pending = sum(line["status"] == "pending" for line in lines)
        self.failures = [
            (line["row"], line["id"], line["error"]) for line in lines if line["status"] == "failed"
        ]
