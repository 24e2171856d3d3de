"""Image-caption training data: folders, manifests and WebDataset shards, as one resumable stream.

Three sources (``open_source(spec)``):
- a directory: every image (``.png .jpg .jpeg .webp .bmp``, recursive) with a ``.txt`` caption of
  the same stem next to it;
- a ``.jsonl`` / ``.csv`` manifest: one row per sample with an image path (``image``, ``file_name``
  or ``path``; relative to the manifest) and a caption (``caption`` or ``text``);
- WebDataset ``.tar`` shards: local paths or brace patterns (``data/shard-{0000..0099}.tar``),
  several separated by commas; each sample needs an image member (``jpg``, ``png``, ...) and a ``txt``.

Bad samples never stop a run: a missing/empty caption and an unreadable image are skipped and
counted (``DataStats``), and reported with the file names of the first few. A source with no
usable sample stops the run before the first training step.

``SampleStream`` is the per-process view: an endless sequence of epochs; each epoch shuffles
the samples (or the shards) with ``(seed, epoch)``, then gives process ``rank`` its share. Its
position ``(epoch, offset)`` is saved with every checkpoint, so a resumed run reads exactly the
samples the uninterrupted run would have read.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InstantStyleError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp")
MAX_EXAMPLES = 5


@dataclass
class Record:
    """One raw sample: its key, the encoded image bytes (or a path to read) and the caption."""

    key: str
    caption: str
    data: bytes | None = None
    path: Path | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        return self.path.read_bytes()


@dataclass
class Sample:
    """A decoded, resized, centre-cropped sample with SDXL's size/crop conditioning."""

    key: str
    caption: str
    digest: str  # sha256 of the image bytes (cache key part)
    image: object  # PIL.Image RGB, resolution x resolution (what the VAE and the image encoder see)
    pixels: torch.Tensor  # [3, R, R] in [-1, 1]
    original_size: tuple[int, int]  # (height, width) of the source image
    crop_top_left: tuple[int, int]  # (top, left) of the crop, in resized pixels
    cache_key: str | None = None

    def time_ids(self, resolution: int) -> list[int]:
        """SDXL micro-conditioning: original size, crop top-left, target size."""
        return [*self.original_size, *self.crop_top_left, resolution, resolution]


@dataclass
class DataStats:
    """Samples used and skipped, with a few examples of each problem."""

    used: int = 0
    missing_caption: int = 0
    unreadable: int = 0
    examples: dict[str, list[str]] = field(default_factory=lambda: {"missing_caption": [], "unreadable": []})

    def skip(self, kind: str, what: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples[kind]) < MAX_EXAMPLES:
            self.examples[kind].append(what)

    @property
    def skipped(self) -> int:
        return self.missing_caption + self.unreadable

    def summary(self) -> str:
        parts = [f"{self.used} samples used"]
        if self.missing_caption:
            parts.append(
                f"{self.missing_caption} skipped for a missing or empty caption "
                f"(e.g. {', '.join(self.examples['missing_caption'])})"
            )
        if self.unreadable:
            parts.append(
                f"{self.unreadable} skipped as unreadable images (e.g. {', '.join(self.examples['unreadable'])})"
            )
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {
            "used": self.used,
            "missing_caption": self.missing_caption,
            "unreadable": self.unreadable,
            "examples": self.examples,
        }


# ---------------------------------------------------------------------- sources


class IndexedSource:
    """Folder or manifest: a list of records, indexed (shuffled per epoch)."""

    shards = None

    def __init__(self, spec: str, records: list[Record], stats: DataStats, description: str):
        self.spec = spec
        self.records = records
        self.stats = stats
        self.description = description

    def __len__(self) -> int:
        return len(self.records)

    def epoch(self, epoch: int, seed: int, rank: int, world: int) -> Iterator[Record]:
        order = list(range(len(self.records)))
        random.Random(_mix(seed, epoch)).shuffle(order)
        per_rank = (
            len(order) // world if len(order) >= world else len(order)
        )  # equal shares: same steps on every rank
        mine = order[rank::world][:per_rank] if len(order) >= world else order
        for i in mine:
            yield self.records[i]


class ShardSource:
    """WebDataset tar shards, streamed; shards are shuffled per epoch and split between processes."""

    def __init__(self, spec: str, shards: list[str], stats: DataStats):
        self.spec = spec
        self.shards = shards
        self.stats = stats
        self.description = f"{len(shards)} WebDataset shard(s)"

    def epoch(self, epoch: int, seed: int, rank: int, world: int) -> Iterator[Record]:
        import webdataset as wds

        shards = list(self.shards)
        random.Random(_mix(seed, epoch)).shuffle(shards)
        split_shards = len(shards) >= world
        mine = shards[rank::world] if split_shards else shards

        def handler(exc: Exception) -> bool:  # a damaged shard member: count it, go on
            self.stats.skip("unreadable", f"{type(exc).__name__}: {str(exc)[:80]}")
            return True

        dataset = wds.WebDataset(
            mine,
            shardshuffle=False,
            nodesplitter=None,
            workersplitter=None,
            empty_check=False,
            handler=handler,
        )
        for i, sample in enumerate(dataset):
            if not split_shards and i % world != rank:
                continue
            key = f"{sample.get('__url__', '')}:{sample.get('__key__', '')}"
            image_key = next((k for k in WDS_IMAGE_KEYS if k in sample), None)
            caption = sample.get("txt")
            caption = caption.decode("utf-8", "replace").strip() if isinstance(caption, bytes) else ""
            if image_key is None:
                self.stats.skip("unreadable", f"{key} (no image member)")
                continue
            if not caption:
                self.stats.skip("missing_caption", key)
                continue
            yield Record(key, caption, data=sample[image_key])


def open_source(spec: str) -> IndexedSource | ShardSource:
    """Open ``spec`` (folder, .jsonl/.csv manifest, or .tar shards); raise if it holds nothing usable."""
    stats = DataStats()
    spec = str(spec)
    if ".tar" in spec:
        return ShardSource(spec, _expand_shards(spec), stats)
    path = Path(spec)
    if path.is_dir():
        records = _folder_records(path, stats)
        kind = f"folder '{path}'"
    elif path.is_file() and path.suffix.lower() in (".jsonl", ".csv"):
        records = _manifest_records(path, stats)
        kind = f"manifest '{path}'"
    elif path.exists():
        raise InstantStyleError(
            f"--data '{spec}' is not a folder, a .jsonl/.csv manifest or .tar shards; see `instantstyle train-adapter --help`"
        )
    else:
        raise InstantStyleError(
            f"--data '{spec}' does not exist; give an image folder, a manifest or .tar shards"
        )
    if not records:
        raise InstantStyleError(
            f"--data {kind} holds no usable samples ({_empty_reason(stats)}); every image needs a caption "
            "(a .txt file of the same name, or a caption column); nothing was trained"
        )
    return IndexedSource(spec, records, stats, f"{kind}: {len(records)} samples")


def _empty_reason(stats: DataStats) -> str:
    if stats.missing_caption or stats.unreadable:
        return stats.summary().replace("0 samples used; ", "")
    return "no images found"


def _folder_records(root: Path, stats: DataStats) -> list[Record]:
    records = []
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()):
        caption_file = image.with_suffix(".txt")
        caption = (
            caption_file.read_text(encoding="utf-8", errors="replace").strip()
            if caption_file.is_file()
            else ""
        )
        if not caption:
            stats.skip("missing_caption", str(image.relative_to(root)))
            continue
        records.append(Record(str(image.relative_to(root)), caption, path=image))
    return records


def _manifest_records(path: Path, stats: DataStats) -> list[Record]:
    rows: list[dict] = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise InstantStyleError(
                    f"manifest '{path}' line {n} is not JSON; each line must be "
                    '{"image": "path.jpg", "caption": "..."}'
                ) from None
            rows.append(row if isinstance(row, dict) else {})
    else:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    records = []
    for n, row in enumerate(rows, 1):
        image = next((row[k] for k in ("image", "file_name", "path") if row.get(k)), None)
        caption = next((row[k] for k in ("caption", "text") if row.get(k) is not None), "")
        if image is None:
            raise InstantStyleError(f"manifest '{path}' row {n} has no 'image' (or 'file_name'/'path') field")
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        if not str(caption).strip():
            stats.skip("missing_caption", str(image))
            continue
        records.append(Record(str(image), str(caption).strip(), path=image_path))
    return records


def _expand_shards(spec: str) -> list[str]:
    from braceexpand import braceexpand

    shards: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        shards += list(braceexpand(part))
    missing = [s for s in shards if "://" not in s and not Path(s).is_file()]
    if missing:
        raise InstantStyleError(
            f"--data: {len(missing)} of {len(shards)} shard(s) do not exist (first: '{missing[0]}'); check the pattern"
        )
    if not shards:
        raise InstantStyleError(f"--data '{spec}' names no shards")
    return shards


def _mix(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}".encode()).digest()[:8], "little")


# ---------------------------------------------------------------------- preprocessing


def center_crop(image, resolution: int):
    """Resize the short side to ``resolution`` and crop the centre square.

    Returns ``(image, original_size=(h, w), crop_top_left=(top, left))`` -- SDXL's size/crop
    conditioning, recorded so the model learns what a crop looks like.
    """
    from PIL import Image

    w, h = image.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution)), (h, w), (top, left)


def to_tensor(image) -> torch.Tensor:
    """PIL RGB ``[H, W, 3]`` uint8 -> ``[3, H, W]`` float in [-1, 1]."""
    import numpy as np

    a = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # [H, W, 3]
    return a.permute(2, 0, 1).float().div(127.5).sub(1.0)


def decode(record: Record, resolution: int, max_pixels: int = 40_000_000) -> Sample:
    """Read, decode and crop one record; raises ``InstantStyleError`` if the image is unreadable."""
    from ..images import load_image

    try:
        data = record.read()
    except OSError as exc:
        raise InstantStyleError(f"image '{record.key}' cannot be read ({exc.strerror or exc})") from None
    image = load_image(data, what=f"image '{record.key}'", max_pixels=max_pixels)
    digest = hashlib.sha256(data).hexdigest()
    cropped, original, crop = center_crop(image, resolution)
    return Sample(record.key, record.caption, digest, cropped, to_tensor(cropped), original, crop)


# ---------------------------------------------------------------------- the per-process stream


class SampleStream:
    """Endless, resumable stream of decoded samples for one process.

    ``state_dict()`` is ``{"epoch", "offset"}``: ``offset`` counts records of this epoch already
    consumed (skipped ones included), so ``load_state_dict`` continues at the exact same record.
    """

    def __init__(self, source, resolution: int, seed: int = 0, rank: int = 0, world: int = 1, log=None):
        self.source = source
        self.resolution = resolution
        self.seed = seed
        self.rank = rank
        self.world = world
        self.log = log or (lambda msg: None)
        self.epoch = 0
        self.offset = 0
        self._it: Iterator[Record] | None = None
        self._used_this_epoch = 0

    @property
    def stats(self) -> DataStats:
        return self.source.stats

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._it = None
        self._used_this_epoch = self.offset  # resumed mid-epoch: its earlier records were usable

    def _records(self) -> Iterator[Record]:
        it = self.source.epoch(self.epoch, self.seed, self.rank, self.world)
        for _ in range(self.offset):  # fast-forward to the saved position (no decoding)
            if next(it, None) is None:
                break
        return it

    def next_record(self) -> Record:
        """The next raw record; a whole epoch without one usable sample stops the run."""
        while True:
            if self._it is None:
                self._it = self._records()
            rec = next(self._it, None)
            if rec is not None:
                self.offset += 1
                return rec
            if self._used_this_epoch == 0:
                raise InstantStyleError(
                    f"--data '{self.source.spec}' gave no usable sample to process {self.rank} "
                    f"({self.stats.summary()}); nothing was trained"
                )
            self.epoch, self.offset, self._it, self._used_this_epoch = self.epoch + 1, 0, None, 0

    def next_usable(self, decode_fn):
        """``decode_fn(record)`` for the next record it accepts; one raising ``InstantStyleError`` is skipped and counted."""
        while True:
            rec = self.next_record()
            try:
                item = decode_fn(rec)
            except InstantStyleError as exc:
                self.stats.skip("unreadable", rec.key)
                self.log(f"skipped unreadable image {rec.key}: {exc} ({self.stats.unreadable} so far)")
                continue
            self._used_this_epoch += 1
            self.stats.used += 1
            return item
