"""Order, shard and batch the rows of a run.

- **Order by shape.** Rows are sorted by what fixes the tensors' shapes (method, task, size,
  classifier-free guidance, image tokens, ControlNets, images per call), so every shape is visited
  in one contiguous stretch: a compiled UNet or a captured CUDA graph is never rebuilt for a shape
  it has seen, whatever the manifest's order.
- **Shard deterministically.** ``shard(rows, rank, world)`` cuts the ordered rows into ``world``
  contiguous, near-equal parts; it depends only on the rows given, so ranks that are given the same
  rows (the accelerate engine broadcasts which are finished from rank 0) agree on the split without
  sending any rows. Sharding what is left, not the whole manifest, keeps a resumed run balanced.
- **Batch.** Consecutive rows that ask for the same thing but the seed (``batch_key``) share one
  pipeline call of up to ``batch_size`` images, each image with its own generator (the row's seed),
  so a batched image is the one-at-a-time image. Only text-to-image InstantStyle rows batch; the
  others run one row per call.
"""

from __future__ import annotations

import json

from .manifest import Row

UNBATCHED = "unbatched"


def shape_key(row: Row, images: int | None = None) -> str:
    """What fixes the shapes of a row's pipeline call (``images`` overrides its images per call)."""
    req = row.request
    if req is None:
        return ""  # failed rows first: they cost nothing
    tokens = len(req.style) if req.style_combine == "concat" else 1
    key = [
        req.method,
        req.task,
        req.width or 0,
        req.height or 0,
        req.guidance > 1.0,
        tokens,
        bool(req.composition),
        bool(req.negative_style),
        len(req.style_masks),
        list(req.control),
        bool(req.mask),
        images or req.num_images,
    ]
    return json.dumps(key)


def batchable(row: Row) -> bool:
    req = row.request
    return req is not None and req.method == "instantstyle" and req.task == "txt2img" and not req.style_masks


def batch_key(row: Row) -> str:
    """Rows with equal keys differ at most in seed and number of images: they can share a call."""
    if not batchable(row):
        return f"{UNBATCHED}:{row.id or row.index}"
    return json.dumps(row.request.model_dump(mode="json", exclude={"seed", "num_images"}), sort_keys=True)


def order(rows: list[Row]) -> list[Row]:
    """Rows sorted by shape, then by what they ask for, then by manifest position (stable, deterministic)."""
    return sorted(rows, key=lambda r: (shape_key(r), batch_key(r), r.index))


def unique(rows: list[Row]) -> list[Row]:
    """The first row of each id (identical rows are one piece of work)."""
    seen: set[str] = set()
    out = []
    for row in rows:
        if row.id not in seen:
            seen.add(row.id)
            out.append(row)
    return out


def shard(rows: list[Row], rank: int, world: int) -> list[Row]:
    """Rank ``rank``'s contiguous part of the ordered rows (of ``world`` near-equal parts)."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    ordered = order(unique(rows))
    n = len(ordered)
    return ordered[rank * n // world : (rank + 1) * n // world]


def units(rows: list[Row], batch_size: int = 1) -> list[list[Row]]:
    """Pipeline calls: runs of consecutive rows with one ``batch_key`` and at most ``batch_size`` images,
    ordered so that calls of one shape are contiguous."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be >= 1")
    calls: list[list[Row]] = []
    current: list[Row] = []
    for row in order(rows):
        fits = (
            current
            and batchable(row)
            and batch_key(row) == batch_key(current[0])
            and sum(r.num_images for r in current) + row.num_images <= batch_size
        )
        if fits:
            current.append(row)
            continue
        if current:
            calls.append(current)
        current = [row]
    if current:
        calls.append(current)
    return sorted(calls, key=lambda unit: shape_key(unit[0], sum(r.num_images for r in unit)))


def shape_changes(calls: list[list[Row]]) -> int:
    """How many times consecutive calls change shape (what a compiled graph would pay for)."""
    keys = [shape_key(unit[0], sum(r.num_images for r in unit)) for unit in calls]
    return sum(a != b for a, b in zip(keys, keys[1:], strict=False))
