"""``scope(pipe, options)``: the fast path applied to one pipeline call, everything undone on exit."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import replace

import torch

from ..errors import InstantStyleError
from ..processors.fast import FastAttention
from ..processors.scoped import scoped_processors, wrapped_forward
from . import cfg as fast_cfg
from . import compiling, project, unet_graphs
from . import context as fast_context
from . import deepcache as fast_deepcache
from . import fp8 as fast_fp8
from . import plan as fast_plan
from . import vae as fast_vae
from .options import ATTENTION_BACKENDS, COMPILE_SCOPES, FastOptions, check, options_for


def offloaded(unet, device: torch.device) -> bool:
    """True when the UNet's weights move during a call (model, sequential or group offload)."""
    return unet.device != device or any(
        hasattr(m, "_hf_hook") or getattr(m, "_diffusers_hook", None) is not None for m in unet.modules()
    )


def effective(options: FastOptions, unet, device: torch.device) -> FastOptions:
    """The pieces a call can really use on this UNet and device (what ``scope`` yields)."""
    if options.attention not in ATTENTION_BACKENDS:
        raise InstantStyleError(
            f"attention backend {options.attention!r} is not one of {', '.join(ATTENTION_BACKENDS)}"
        )
    if options.compile_scope not in COMPILE_SCOPES:
        raise InstantStyleError(
            f"compile scope {options.compile_scope!r} is not one of {', '.join(COMPILE_SCOPES)}"
        )
    check(options)
    if offloaded(unet, device):
        # Weights move between devices during the call: pieces that hold tensors (fused weights,
        # scale tensors, K/V buffers, compiled graphs, CUDA graphs, memory formats, the VAE twin)
        # would be stale. Keep the module-level ones (and the approximations, which hold activations only).
        return replace(
            options,
            light_inactive=False,
            fuse_qkv=False,
            compile=False,
            channels_last=False,
            fp8=False,
            attention="auto",
            cuda_graphs=False,
            compile_vae=False,
            context_kv=False,
            prune_ip=False,
            vae_decode="stock",
            inductor_tuning=False,
        )
    if options.compile and options.compile_scope == "unet" and "forward" in unet.__dict__:
        options = replace(options, compile_scope="blocks")  # someone wrapped the forward: keep their wrapper
    if options.cuda_graphs:
        if not unet_graphs.graphs_usable(unet, device):
            options = replace(options, cuda_graphs=False)
        else:
            # Graphs bake in weight addresses (channels-last would re-lay the weights every call)
            # and run the projection inside the graph (a per-call Python cache cannot).
            options = replace(options, channels_last=False, project_once=False)
    if options.compile and options.compile_scope == "unet":
        options = replace(options, project_once=False)  # a Python-side cache inside one graph: no
    return options


@contextlib.contextmanager
def _outer_forward(unet, hooks):
    """Run ``hook(args, kwargs)`` before every UNet call, outside any compiled region or CUDA
    graph (eager Python: K/V fills, the step counter, argument fixes). A hook may return new
    ``(args, kwargs)``."""

    def wrap(inner):
        def forward(*args, **kwargs):
            for hook in hooks:
                fixed = hook(args, kwargs)
                if fixed is not None:
                    args, kwargs = fixed
            return inner(*args, **kwargs)

        return forward

    with wrapped_forward(unet, wrap):
        yield


@contextlib.contextmanager
def scope(pipe, options: FastOptions | str | None = "auto", cross_attention_kwargs: Mapping | None = None):
    """Apply the fast path to ``pipe.unet`` for one call; everything is restored on exit.

    Reads the IP processors' current scales (so enter it *inside* ``adapter.scoped_scales``).
    With ``ip_adapter_masks`` in ``cross_attention_kwargs`` the IP layers keep diffusers'
    processors (only they implement masks); the rest of the fast path still applies. Yields the
    options really used (``effective``).
    """
    unet = pipe.unet
    device = getattr(pipe, "_execution_device", unet.device)
    options = options_for(options, device)
    if options.fp8 and device.type == "cuda" and not fast_fp8.fp8_supported(device):
        raise InstantStyleError(
            "--speed fp8 needs a GPU with float8 matmuls (compute capability >= 8.9, "
            "e.g. H100/L40/RTX 4090); use --speed fast"
        )
    options = effective(options, unet, device)
    if options.is_plain:
        yield options
        return
    masks = bool(cross_attention_kwargs and cross_attention_kwargs.get("ip_adapter_masks") is not None)
    with contextlib.ExitStack() as stack:
        if options.fp8:
            stack.enter_context(fast_fp8.fp8_linears(unet, options.fp8_scaling))
        plan = fast_plan.plan_processors(unet, options, masks)
        stack.enter_context(scoped_processors(unet, plan))
        deep = None
        if options.deepcache_interval > 1:
            deep = stack.enter_context(
                fast_deepcache.wrapped_blocks(
                    fast_deepcache.DeepCache.for_unet(unet, options.deepcache_interval)
                )
            )
        if options.inductor_tuning:
            stack.enter_context(compiling.cudnn_benchmark(True))
        if options.project_once:
            stack.enter_context(project.project_once(unet))
        if options.channels_last:
            stack.enter_context(_channels_last(unet))
        if options.compile and options.compile_scope == "unet":
            stack.enter_context(compiling.compiled_unet(unet, options))
        elif options.compile:
            stack.enter_context(compiling.compiled_blocks(unet, options))
        if (
            options.compile_vae
            and getattr(pipe, "vae", None) is not None
            and fast_vae.fast_decoder(pipe, options) is None
        ):
            stack.enter_context(compiling.compiled_decoder(pipe.vae, options))
        stack.enter_context(_unet_sdpa_backend(unet, options.attention))
        if options.cuda_graphs:
            if not unet_graphs.graphs_usable(
                unet, device
            ):  # processors as installed (a method's own may be stateful)
                options = replace(options, cuda_graphs=False)
            else:
                stack.enter_context(
                    unet_graphs.graphed_unet(unet, options, device, deep.phase if deep is not None else None)
                )
        hooks = []
        if options.cfg_truncation > 0:
            hooks.append(fast_cfg.CondHalf())
        if deep is not None:
            hooks.append(deep.before_forward)
        if options.context_kv:
            modules = {
                f"{name}.processor": m for name, m in unet.named_modules() if hasattr(m, "set_processor")
            }
            layers = [
                (modules[name], p)
                for name, p in plan.items()
                if isinstance(p, FastAttention) and p.ctx is not None
            ]
            if layers:
                stack.enter_context(_context(unet, layers, hooks))
        if hooks:
            stack.enter_context(_outer_forward(unet, hooks))
        yield options


def _context(unet, layers, hooks):
    """The K/V cache of this call (``fast.context``), as a hook of the outer forward."""
    cache = fast_context.ContextCache(unet, layers)
    unet.__dict__["_instantstyle_context"] = cache  # the last call's, for tests and the benchmark
    hooks.append(cache.before_forward)
    return contextlib.nullcontext(cache)


@contextlib.contextmanager
def _channels_last(unet):
    # Outside inference mode, so the converted weights stay ordinary tensors (usable for training later).
    with torch.inference_mode(False), torch.no_grad():
        unet.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            unet.to(memory_format=torch.contiguous_format)


def _sdpa_backend(name: str):
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    return sdpa_kernel([backend])


def _unet_sdpa_backend(unet, name: str):
    """Pin the SDPA kernel inside the UNet's forward only: the VAE's single 512-wide head has no
    flash kernel, so a pipeline-wide pin would fail in the decoder."""
    if name == "auto":
        return contextlib.nullcontext()

    def wrap(inner):
        def forward(*args, **kwargs):
            with _sdpa_backend(name):
                return inner(*args, **kwargs)

        return forward

    return wrapped_forward(unet, wrap)


def release_caches(unet) -> None:
    """Forget what the fast path cached for ``unet`` (fused weights, processors, fp8 twins, CUDA
    graphs): before its weights move, so no stale copy keeps GPU memory (seen on an H200: the
    fused QKV weights, 1.2 GiB, stayed on the GPU under group offloading)."""
    for module in unet.modules():
        fast_plan._FUSED.pop(module, None)
        fast_plan._PROCESSORS.pop(module, None)
        fast_fp8._FP8.pop(module, None)
    unet_graphs.release_graphs(unet)
    fast_deepcache.release(unet)
