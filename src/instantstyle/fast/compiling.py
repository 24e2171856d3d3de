"""What ``torch.compile`` bakes in at trace time, and where its artefacts live on disk.

- ``compile_kwargs``: the backend, mode and Inductor options of one compile. With ``tuning``,
  Inductor's coordinate-descent tuning of its generated kernels' launch parameters (on in
  ``max-autotune`` modes; diffusers' "accelerate inference" guide sets it for SDXL too).
  torch.compile takes a mode or options, not both, so a mode is expanded into its options.
- ``compile_key``: everything a compiled artefact depends on beyond guarded inputs: backend,
  mode, Inductor options and the SDPA backend pinned around it (dynamo does not guard the SDP
  flags, so an ``attention=`` A/B under one cached compile would silently measure the first).
- ``set_cache_dir``: Inductor's FX-graph, AOTAutograd and autotuning caches in a chosen folder,
  so a restarted server does not pay code generation and autotuning again (dynamo still traces,
  tens of seconds on SDXL's UNet).
- ``cudnn_benchmark``: cuDNN picks the fastest convolution algorithm per shape (scoped).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..processors.scoped import wrapped_forward

if TYPE_CHECKING:
    from .options import FastOptions


def compile_kwargs(backend: str, mode: str | None, tuning: bool) -> dict:
    """Keyword arguments for ``torch.compile`` (besides ``dynamic``)."""
    if backend != "inductor" or not tuning:
        return {"backend": backend, "mode": mode}
    import torch._inductor

    options = dict(torch._inductor.list_mode_options(mode)) if mode else {}
    options["coordinate_descent_tuning"] = True
    return {"backend": backend, "options": options}


def compile_key(scope: str, options) -> tuple:
    """The cache key of one compiled artefact for ``FastOptions`` ``options``."""
    return (
        scope,
        options.compile_backend,
        options.compile_mode,
        options.inductor_tuning,
        options.attention,
        options.fp8,
        options.fp8_scaling,
    )


def set_cache_dir(path: str | Path) -> Path:
    """Put Inductor's on-disk caches (FX graphs, AOTAutograd, autotuning results) under ``path``."""
    path = Path(path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True
    if hasattr(inductor, "autotune_local_cache"):
        inductor.autotune_local_cache = True
    try:
        import torch._functorch.config as functorch

        if hasattr(functorch, "enable_autograd_cache"):
            functorch.enable_autograd_cache = True
    except ImportError:  # pragma: no cover - older torch
        pass
    return path


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = saved or on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


_COMPILED_ATTR = "_instantstyle_compiled"  # the block's compiled callables, kept for reuse


def transformer_blocks(unet) -> list[torch.nn.Module]:
    """The repeated ``BasicTransformerBlock`` modules (the regions we compile)."""
    from diffusers.models.attention import BasicTransformerBlock

    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


def configure_dynamo(limit: int = 64) -> None:
    """Room for one graph per distinct block shape x processor kind x batch size."""
    import torch._dynamo

    cfg = torch._dynamo.config
    cfg.cache_size_limit = max(cfg.cache_size_limit, limit)
    cfg.accumulated_cache_size_limit = max(cfg.accumulated_cache_size_limit, 4 * limit)


@contextlib.contextmanager
def compiled_blocks(unet, options: FastOptions):
    """Attach each block's cached ``torch.compile`` wrapper for the call; detach afterwards."""
    blocks = transformer_blocks(unet)
    if options.compile_resnets:
        from diffusers.models.resnet import ResnetBlock2D

        blocks += [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    configure_dynamo()
    key = compile_key("blocks", options)
    kwargs = compile_kwargs(options.compile_backend, options.compile_mode, options.inductor_tuning)
    saved = [b._compiled_call_impl for b in blocks]
    try:
        for b in blocks:
            cache = b.__dict__.setdefault(_COMPILED_ATTR, {})
            if key not in cache:
                cache[key] = torch.compile(b._call_impl, dynamic=False, **kwargs)
            b._compiled_call_impl = cache[key]
        yield
    finally:
        for b, fn in zip(blocks, saved, strict=True):
            b._compiled_call_impl = fn


def compiled_unet(unet, options: FastOptions):
    """The whole UNet forward as one cached ``torch.compile`` graph (``compile_scope="unet"``)."""
    configure_dynamo()
    cache = unet.__dict__.setdefault(_COMPILED_ATTR, {})
    key = compile_key("unet", options)  # everything baked in at trace time
    if key not in cache:
        kwargs = compile_kwargs(options.compile_backend, options.compile_mode, options.inductor_tuning)
        cache[key] = torch.compile(type(unet).forward.__get__(unet), dynamic=False, **kwargs)
    return wrapped_forward(unet, lambda inner: cache[key])


@contextlib.contextmanager
def compiled_decoder(vae, options: FastOptions):
    """The VAE decoder compiled (cached on the module, attached for the call only)."""
    decoder = getattr(vae, "decoder", None)
    if decoder is None:
        yield
        return
    cache = decoder.__dict__.setdefault(_COMPILED_ATTR, {})
    key = compile_key("vae", options)
    if key not in cache:
        kwargs = compile_kwargs(options.compile_backend, options.compile_mode, options.inductor_tuning)
        cache[key] = torch.compile(decoder._call_impl, dynamic=False, **kwargs)
    saved = decoder._compiled_call_impl
    decoder._compiled_call_impl = cache[key]
    try:
        yield
    finally:
        decoder._compiled_call_impl = saved
