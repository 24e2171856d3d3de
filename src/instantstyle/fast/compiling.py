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

import torch


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
    return (scope, options.compile_backend, options.compile_mode, options.inductor_tuning, options.attention,
            options.fp8, options.fp8_scaling)


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
