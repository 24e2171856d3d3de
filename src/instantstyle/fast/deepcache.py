"""DeepCache-style feature caching across steps (approximation).

DeepCache (Ma, Fang, Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024,
arXiv 2312.00858; authors' code: github.com/horseee/DeepCache) observes that a UNet's deep
features change little between adjacent denoising steps. Every ``interval``-th step runs the
whole UNet and keeps the deep features; the steps in between run only the shallow branch (the
input convolution, the first down block, the last up block and the output layers) and take the
deep part from the last full step, through the skip connection that joins them (the input of the
last up block). This is the authors' uniform schedule with the branch at block granularity
(their ``cache_block_id`` picks a layer inside the block; we cache whole blocks, the coarsest
and cheapest branch: on SDXL the kept blocks carry ~2 % of the FLOPs and no attention).

Mechanism: the skipped blocks' forwards are wrapped for the call. On a full step each returns
its real output and copies it into a persistent buffer; on a cached step it returns the buffer
(the UNet's own forward still runs, so embeddings, skip bookkeeping and shapes are diffusers').
Whether a step is full is decided outside any compiled region or CUDA graph (``phase``) and is
part of the graph key: one graph per phase, no recapture after both exist. Under CFG truncation a
cached batch-B step reads the ``[neg, pos]`` buffers of a batch-2B full step by their ``pos`` half.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils import _pytree as pytree


def deep_blocks(unet) -> list[tuple[str, torch.nn.Module]]:
    """The blocks a cached step skips: every down block but the first, the mid block, every up
    block but the last."""
    blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks) if i > 0]
    if unet.mid_block is not None:
        blocks.append(("mid_block", unet.mid_block))
    blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks) if i < len(unet.up_blocks) - 1]
    return blocks


class DeepCache:
    """Which step is full, and the deep blocks' buffered outputs. One per UNet, kept across
    calls (``for_unet``) and reset at each call's start, so the wrapped forwards a compiled graph
    traced stay the same objects (a new closure per call would make dynamo recompile)."""

    def __init__(self, unet, interval: int):
        self.unet = unet
        self.wrappers: dict = {}  # block name -> its persistent wrapped forward
        self.reset(interval)

    @classmethod
    def for_unet(cls, unet, interval: int) -> DeepCache:
        cache = unet.__dict__.get(_STATE_ATTR)
        if cache is None:
            cache = unet.__dict__[_STATE_ATTR] = cls(unet, interval)
        cache.reset(interval)
        return cache

    def reset(self, interval: int) -> None:
        if interval < 2:
            raise ValueError("DeepCache interval must be >= 2")
        self.interval = interval
        self.step = 0  # UNet calls so far in this call
        self.cached = False  # the current UNet call skips the deep blocks
        self.batch = 0
        self.source = 0  # the batch of the full step whose buffers a cached step reads
        self.fresh: set = set()  # (block, batch) buffers written in this call
        self.full_steps = 0
        self.cached_steps = 0

    def before_forward(self, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.batch = sample.shape[0]
        self.source = self._source(self.batch)
        self.cached = self.step % self.interval != 0 and self.source > 0
        self.step += 1
        if self.cached:
            self.cached_steps += 1
        else:  # marked here, outside any graph: a replayed graph runs no Python
            self.full_steps += 1
            self.fresh.update((name, self.batch) for name, _ in deep_blocks(self.unet))

    def phase(self) -> tuple:
        """What a graph of this call bakes in (part of its key)."""
        return (self.cached, self.source if self.cached else 0)

    def _source(self, batch: int) -> int:
        """``batch`` if this call's full steps buffered that batch, ``2 * batch`` if they buffered
        the CFG batch (truncated steps), else 0 (a full step is needed)."""
        names = [name for name, _ in deep_blocks(self.unet)]
        for source in (batch, 2 * batch):
            if all((name, source) in self.fresh for name in names):
                return source
        return 0

    def wrap(self, name: str, inner):
        store = _store(self.unet)

        def forward(*args, **kwargs):
            if self.cached:
                hit = store[(name, self.source)]
                if self.source == self.batch:
                    return hit
                return pytree.tree_map(
                    lambda t: t[self.batch :] if isinstance(t, torch.Tensor) else t, hit
                )  # pos half
            out = inner(*args, **kwargs)
            store[(name, self.batch)] = _copy_into(store.get((name, self.batch)), out)
            return out

        return forward


_STORE_ATTR = "_instantstyle_deepcache"
_STATE_ATTR = "_instantstyle_deepcache_state"


def _store(unet) -> dict:
    """Persistent buffers kept on the UNet (their addresses must outlive captured graphs)."""
    return unet.__dict__.setdefault(_STORE_ATTR, {})


def release(unet) -> None:
    unet.__dict__.pop(_STORE_ATTR, None)
    unet.__dict__.pop(_STATE_ATTR, None)


def _copy_into(old, out):
    leaves, spec = pytree.tree_flatten(out)
    old_leaves = pytree.tree_leaves(old) if old is not None else None
    if (
        old_leaves is None
        or len(old_leaves) != len(leaves)
        or any(
            isinstance(a, torch.Tensor) and (a.shape != b.shape or a.dtype != b.dtype)
            for a, b in zip(old_leaves, leaves, strict=True)
        )
    ):
        with torch.inference_mode(False), torch.no_grad():
            old_leaves = [torch.empty_like(t) if isinstance(t, torch.Tensor) else t for t in leaves]
    with torch.no_grad():
        for buf, t in zip(old_leaves, leaves, strict=True):
            if isinstance(t, torch.Tensor):
                buf.copy_(t)
    return pytree.tree_unflatten(old_leaves, spec)


@contextlib.contextmanager
def wrapped_blocks(cache: DeepCache):
    """Wrap the deep blocks' forwards for the call; the previous state afterwards."""
    saved = []
    try:
        for name, block in deep_blocks(cache.unet):
            had_own = "forward" in block.__dict__
            inner = block.forward
            saved.append((block, had_own, inner))
            if had_own:  # someone else's wrapper: wrap it for this call only
                block.forward = cache.wrap(name, inner)
            else:
                if name not in cache.wrappers:
                    cache.wrappers[name] = cache.wrap(name, inner)
                block.forward = cache.wrappers[name]
        yield cache
    finally:
        for block, had_own, inner in saved:
            if had_own:
                block.forward = inner
            else:
                del block.forward
