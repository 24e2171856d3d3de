"""The UNet forward replayed as CUDA graphs for a call (``cuda_graphs``): the glue to ``graphs``.

The graph cache lives on the UNet; it keys each graph on the options, the installed processors,
the weights' addresses and the active LoRA adapters with their scales, and falls back to eager (said once) when a capture is refused.
"""

from __future__ import annotations

import itertools
import logging

import torch

from ..loras import graph_key as lora_graph_key
from ..processors.scoped import wrapped_forward
from . import graphs
from .options import FastOptions

_log = logging.getLogger(__name__)

_GRAPHS_ATTR = "_instantstyle_graphs"
# Processors whose __call__ keeps no state between calls: their Python runs once, at capture.
_GRAPH_SAFE_PROCESSORS = (
    "FastAttention",
    "AttnProcessor2_0",
    "AttnProcessor",
    "FusedAttnProcessor2_0",
    "IPAdapterAttnProcessor2_0",
    "IPAdapterAttnProcessor",
)


def graph_cache(unet, capture=None) -> graphs.GraphCache:
    """The UNet's CUDA-graph cache (made on first use; ``capture`` replaces the capturer, for tests)."""
    cache = unet.__dict__.get(_GRAPHS_ATTR)
    if cache is None or capture is not None:
        cache = unet.__dict__[_GRAPHS_ATTR] = graphs.GraphCache(capture)
    return cache


def release_graphs(unet) -> None:
    """Drop the UNet's captured CUDA graphs and their memory pool."""
    unet.__dict__.pop(_GRAPHS_ATTR, None)


def graphs_usable(unet, device: torch.device) -> bool:
    """CUDA graphs need a CUDA device (or a test capturer) and stateless attention processors."""
    cache = unet.__dict__.get(_GRAPHS_ATTR)
    if device.type != "cuda" and (cache is None or isinstance(cache.capture, graphs.CudaCapture)):
        return False
    return all(type(p).__name__ in _GRAPH_SAFE_PROCESSORS for p in unet.attn_processors.values())


def graphed_unet(unet, options: FastOptions, device: torch.device, phase=None):
    """Replay the UNet forward as CUDA graphs for the call (see ``fast.graphs``).
    ``phase()``, when given, names Python decisions that differ between the call's steps
    (DeepCache's full/cached step): part of each graph's key."""
    cache = graph_cache(unet)
    procs = tuple(unet.attn_processors.values())
    weights = tuple(t.data_ptr() for t in itertools.chain(unet.parameters(), unet.buffers()))
    # The image projection's modules (slot wrappers included: their Python runs at capture only)
    # and the versions of their weights: a swapped or rewritten projection captures anew.
    projection = getattr(unet, "encoder_hid_proj", None)
    projection_modules = tuple(projection.modules()) if projection is not None else ()
    context = (
        options,
        tuple(id(p) for p in procs),
        hash(weights),
        len(weights),
        graphs.modules_key(projection_modules),
        # The LoRA layers' active adapters and scales (user LoRAs, B-LoRA) are Python state read
        # at capture: another set or scale captures anew instead of replaying the old one.
        lora_graph_key(unet),
    )

    def wrap(inner):
        def forward(*args, **kwargs):
            if torch.is_grad_enabled() or cache.failed:
                return inner(*args, **kwargs)
            args, kwargs = graphs.timestep_as_tensor(args, kwargs, device)
            try:
                key = context if phase is None else (context, phase())
                out = cache.call(inner, args, kwargs, key, keep=(procs, projection_modules))
            except Exception as exc:  # a capture the kernels or driver refuse: eager from now on, said once
                cache.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                cache.clear()
                _log.warning("CUDA graphs disabled for this model (%s); running without them", cache.failed)
                return inner(*args, **kwargs)
            return inner(*args, **kwargs) if out is graphs.UNCACHEABLE else out

        return forward

    return wrapped_forward(unet, wrap)
