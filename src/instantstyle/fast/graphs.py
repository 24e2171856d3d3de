"""Replay the UNet's forward as CUDA graphs: capture once per input signature, replay every step.

An SDXL UNet step launches about two thousand kernels; from Python each launch costs CPU time
that the GPU may spend waiting. A captured CUDA graph launches them all at once. torch's own
``mode="reduce-overhead"`` does this per compiled region, and regions captured separately
overwrite each other's outputs (seen on an H200); here the whole UNet call is one graph.

``GraphCache`` (one per UNet, kept across calls) maps a *signature* to a captured graph with
static input buffers. The signature is the call's argument tree with every tensor reduced to
(shape, dtype, device), plus a *context* from the fast-path scope that names everything the
graph baked in: the attention processor objects, the weights' addresses, the options, and the
image projection's modules and weight versions (``modules_key``). A call
copies its tensors into the buffers, replays, and returns clones of the outputs (the next replay
overwrites the graph's own). New style image, prompt, seed, scale or preset: same signature, no
capture (scales are tensors updated in place; the slots have one fixed structure,
``injection.fixed_slots``). New size or batch: a new capture (milliseconds plus two warm-up
runs), kept for later.

Conditions the caller (``fast.scope``, through ``fast.unet_graphs``) guarantees: inference only (no autograd), weights that
do not move (no offloading), and stateless attention processors (their Python code runs once,
at capture).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch.utils import _pytree as pytree

UNCACHEABLE = object()  # GraphCache.call's answer when the arguments cannot key a graph


class CudaCapture:
    """Capture with ``torch.cuda.CUDAGraph`` after warm-up runs on a side stream (which also
    lets torch.compile generate its code before capture). All graphs of one cache share one
    memory pool: they never run concurrently, and outputs are cloned before the next replay."""

    def __init__(self, warmup: int = 2):
        self.warmup = warmup
        self.pool = None

    def __call__(self, fn: Callable[[], object], device: torch.device):
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        return graph.replay, out


class TracedCapture:
    """CUDA-graph semantics on any device, for tests on the CPU.

    'Capture' traces the function once into a graph of tensor operations (``make_fx``): Python
    decisions are frozen then, as in a CUDA graph, and every tensor the function reads (static
    inputs, weights, scale tensors) is read again at each 'replay', as a CUDA graph re-reads its
    memory. 'Replay' runs the traced graph and writes into the outputs made at capture. A test
    that passes with this capturer shows that nothing a call changes hides in Python state.
    Like ``CudaCapture`` it runs the function once before capture, so buffers a call makes lazily
    (the fast path's step caches) exist as real tensors before tracing.
    """

    def __init__(self, warmup: int = 1):
        self.warmup = warmup

    def __call__(self, fn: Callable[[], object], device: torch.device):
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.proxy_tensor import make_fx

        for _ in range(self.warmup):
            fn()
        # One fake-tensor mode for the trace's shape metadata: without it make_fx builds one per
        # recorded tensor, each saving a Python stack trace (most of a capture's time on the CPU).
        with tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True))):
            traced = make_fx(fn)()
        out = traced()

        def replay():
            for old, value in zip(pytree.tree_leaves(out), pytree.tree_leaves(traced()), strict=True):
                if isinstance(old, torch.Tensor):
                    old.copy_(value)

        return replay, out


class _Graph:
    __slots__ = ("replay", "inputs", "output", "keep")

    def __init__(self, replay, inputs, output, keep):
        self.replay, self.inputs, self.output, self.keep = replay, inputs, output, keep


class GraphCache:
    """Captured graphs of one module's forward, least recently used dropped past ``max_graphs``."""

    def __init__(self, capture: Callable | None = None, max_graphs: int = 6):
        self.capture = capture or CudaCapture()
        self.max_graphs = max_graphs
        self.graphs: OrderedDict = OrderedDict()
        self.captures = 0  # graphs captured (for tests and the benchmark)
        self.replays = 0
        self.failed: str | None = None  # why a capture failed; the owner then stops using graphs

    def clear(self) -> None:
        self.graphs.clear()

    def call(self, fn: Callable, args: tuple, kwargs: dict, context: Hashable, keep: object = None):
        """``fn(*args, **kwargs)`` through a graph; ``UNCACHEABLE`` when an argument is neither a
        tensor nor hashable, or the tensors are on several devices. ``keep`` is held by the graph (the objects whose ids ``context``
        names, so those ids cannot be reused while the graph exists)."""
        leaves, spec = pytree.tree_flatten((args, kwargs))
        signature, device = [], None
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                device = device or leaf.device
                if leaf.device != device:
                    return UNCACHEABLE  # a graph runs on one device; a CPU tensor would be baked in
                signature.append((tuple(leaf.shape), leaf.dtype, leaf.device))
                continue
            try:
                hash(leaf)
            except TypeError:
                return UNCACHEABLE
            signature.append((type(leaf), leaf))
        key = (context, spec, tuple(signature))
        graph = self.graphs.get(key)
        if graph is None:
            graph = self._capture(fn, leaves, spec, device, keep)
            self.graphs[key] = graph
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        for buffer, leaf in zip(graph.inputs, leaves, strict=True):
            if buffer is not None:
                buffer.copy_(leaf)
        graph.replay()
        self.replays += 1
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, graph.output)

    def _capture(self, fn, leaves, spec, device, keep) -> _Graph:
        inputs = [
            torch.empty(leaf.shape, dtype=leaf.dtype, device=leaf.device).copy_(leaf)
            if isinstance(leaf, torch.Tensor)
            else None
            for leaf in leaves
        ]
        static = [b if b is not None else leaf for b, leaf in zip(inputs, leaves, strict=True)]
        args, kwargs = pytree.tree_unflatten(static, spec)
        replay, output = self.capture(lambda: fn(*args, **kwargs), device)
        self.captures += 1
        return _Graph(replay, inputs, output, keep)


def modules_key(modules) -> tuple:
    """What a graph bakes in of ``modules`` beyond their weights' addresses: each module's identity
    and class, and each weight's identity, address and version counter (bumped by any in-place
    write). Part of a graph's context, so a module swapped in or weights rewritten since the
    capture make a new graph instead of replaying a stale one. The caller keeps the modules alive
    while the graph exists (``keep``), so their ids are not reused."""
    key = []
    for module in modules:
        key.append((id(module), type(module)))
        for t in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False)):
            key.append((id(t), t.data_ptr(), None if t.is_inference() else t._version))
    return tuple(key)


def timestep_as_tensor(args: tuple, kwargs: dict, device: torch.device) -> tuple[tuple, dict]:
    """A Python-number timestep becomes a 0-d tensor (the dtype diffusers' UNet would give it),
    so each step does not key a graph of its own."""

    def convert(t):
        if isinstance(t, bool) or not isinstance(t, int | float):
            return t
        return torch.tensor(t, dtype=torch.int64 if isinstance(t, int) else torch.float64, device=device)

    if len(args) > 1:
        args = (args[0], convert(args[1]), *args[2:])
    elif "timestep" in kwargs:
        kwargs = {**kwargs, "timestep": convert(kwargs["timestep"])}
    return args, kwargs
