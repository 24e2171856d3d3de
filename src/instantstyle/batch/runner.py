"""A batch worker: one loaded model, pipeline calls in order, every row's images and result written.

The model is loaded once per worker (``ModelOptions.load``); its style encoder keeps the
embedding cache (in memory, and on disk in the cache folder every worker of a machine shares), so
a reference image is encoded once however many rows use it. A call of several rows
(``plan.units``) runs the stock pipeline once with one generator per image, seeded with each
row's seed, so each image equals its one-at-a-time image; every image carries its own row's full
parameters (``images.save_png``, written atomically).

A failing call is retried up to ``retries`` times (a batched call that fails is split into its
rows, each retried on its own); its rows are then recorded as failed with a one-line error, and
the run goes on. Only ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM in the CLI) stops it, after the
last finished row's result is written.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InstantStyleError
from .manifest import Row
from .results import ResultLog, now

IMAGES_DIR = "images"


@dataclass(frozen=True)
class ModelOptions:
    """How a worker loads its model (``InstantStyle.from_pretrained``'s arguments); picklable, for Ray."""

    base: str | None = None
    adapter: str | None = None
    image_encoder: str | None = None
    vae: str | None = None
    base_config: str | None = None
    variant: str | None = None
    content_text_encoder: str | None = None
    device: str | None = None
    dtype: str | None = None
    speed: str = "auto"
    memory: str = "auto"
    cfg_truncation: float | None = None
    deepcache_interval: int | None = None
    compile_cache: str | None = None
    cache_dir: str | bool | None = True  # embedding cache: True = the default folder, None = memory only
    max_pixels: int | None = None

    def fingerprint(self) -> dict:
        """What of the model changes a picture, as the user named it (part of every row id)."""
        keys = (
            "base",
            "adapter",
            "image_encoder",
            "vae",
            "base_config",
            "variant",
            "content_text_encoder",
            "dtype",
            "speed",
            "cfg_truncation",
            "deepcache_interval",
        )
        named = {k: getattr(self, k) for k in keys if getattr(self, k) not in (None, "auto")}
        if self.base is None:  # the default base, by name: the CLI always names it
            from ..models import DEFAULT_BASE

            named["base"] = DEFAULT_BASE
        return named

    def load(self, device: str | None = None):
        """The model, on ``device`` (default: this option's, else the best one). Seconds are the caller's."""
        from instantstyle import InstantStyle

        from ..models import DEFAULT_BASE

        kwargs = asdict(self)
        kwargs["base"] = kwargs["base"] or DEFAULT_BASE
        max_pixels = kwargs.pop("max_pixels")
        kwargs["device"] = device or kwargs["device"]
        # long_lived: a batch makes many images, so --speed auto compiles on CUDA (as the server does)
        model = InstantStyle.from_pretrained(progress=False, long_lived=True, **kwargs)
        if max_pixels:
            model.styles.max_pixels = max_pixels
        return model


def one_line(exc: BaseException) -> str:
    """A failure as one line: our errors as they are, others with their type."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, InstantStyleError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def output_names(row: Row) -> list[str]:
    """The row's images, relative to OUT: ``images/ID.png`` (``images/ID-I.png`` for several)."""
    n = row.num_images
    return [f"{IMAGES_DIR}/{row.id}.png"] if n == 1 else [f"{IMAGES_DIR}/{row.id}-{i}.png" for i in range(n)]


class Worker:
    """Runs pipeline calls on one model and records each row (images, then the result line)."""

    def __init__(
        self,
        model,
        out: Path,
        name: str,
        *,
        retries: int = 1,
        on_record: Callable[[dict], None] | None = None,
    ):
        self.model = model
        self.out = Path(out)
        self.name = name
        self.retries = retries
        self.on_record = on_record
        self.log = ResultLog(self.out, name)
        (self.out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        self.device = str(model.device) if model is not None else "none"
        self.worker = f"{socket.gethostname()}/{name}"

    def run(self, calls: list[list[Row]]) -> list[dict]:
        records = []
        try:
            for unit in calls:
                records += self.run_call(unit)
        finally:
            self.log.close()
        return records

    def run_call(self, unit: list[Row]) -> list[dict]:
        """One pipeline call (one or several rows), retried; the rows' results."""
        invalid = [row for row in unit if row.request is None]
        if invalid:  # a row that never validated: failed at once, nothing to retry
            return [self._record(row, "failed", [], 0.0, 1, row.error) for row in invalid]
        error, attempts = None, 0
        for attempt in range(1, self.retries + 2):
            attempts = attempt
            start = time.perf_counter()
            try:
                images = generate_call(self.model, [row.request for row in unit])
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                error = one_line(exc)
                _free_memory()
                if len(unit) > 1:  # the call fails as a whole (e.g. out of memory): each row on its own
                    return [record for row in unit for record in self.run_call([row])]
                continue
            seconds = (time.perf_counter() - start) / len(unit)
            records = []
            for row, row_images in zip(unit, images, strict=True):
                names = output_names(row)
                try:
                    from ..images import save_png

                    for image, name in zip(row_images, names, strict=True):
                        save_png(image, self.out / name, overwrite=True)
                except OSError as exc:  # a full disk fails the row, not the run
                    records.append(self._record(row, "failed", [], seconds, attempt, one_line(exc)))
                    continue
                records.append(self._record(row, "ok", names, seconds, attempt, None))
            return records
        return [self._record(row, "failed", [], 0.0, attempts, error) for row in unit]

    def _record(
        self, row: Row, status: str, outputs: list[str], seconds: float, attempts: int, error: str | None
    ) -> dict:
        record = {
            "id": row.id,
            "row": row.index,
            "status": status,
            "output": outputs[0] if outputs else None,
            "outputs": outputs,
            "images": len(outputs),
            "planned": row.num_images,  # for the progress bar (a failed row still ends its images)
            "seconds": round(seconds, 4),
            "device": self.device,
            "worker": self.worker,
            "attempts": attempts,
            "error": error,
            "finished_at": now(),
        }
        self.log.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return record


def generate_call(model, requests: list) -> list[list]:
    """The images of one pipeline call, per request: one request as ``model.generate``; several
    (equal but for seed and count, text-to-image) as one call with a generator per image."""
    if len(requests) == 1:
        return [model.generate(requests[0])]
    import torch

    from ..images import METADATA_KEY, attach_metadata

    # 1. One request for the whole call: the first row's, with every row's images.
    total = sum(r.num_images for r in requests)
    combined = requests[0].model_copy(update={"num_images": total})
    # 2. One generator per image, each row's seed + i: the generators a one-row call would make.
    seeds = [r.seed + i for r in requests for i in range(r.num_images)]
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    with model.loras.scope(combined.loras):  # the rows' user LoRAs, as generate applies them
        prep = model.prepare(combined)
        images = model.run(model.pipe, prep, generator=generators)
    # 3. Each image's parameters are its row's (seed, count, index), as a one-row call writes them.
    out, k = [], 0
    for r in requests:
        mine = []
        for i in range(r.num_images):
            image = images[k]
            params = json.loads(image.info[METADATA_KEY])
            params.update({"seed": r.seed, "num_images": r.num_images, "index": i, "image_seed": r.seed + i})
            mine.append(attach_metadata(image, params))
            k += 1
        out.append(mine)
    return out


def _free_memory() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
