"""The one scoped swap of attention processors (and of module forwards), undone in ``finally``.

Every change the toolkit makes to a model's attention goes through ``scoped_processors``: the
fast path's processors, the baselines' self-attention patches. The original processor objects
(the identical objects, so compiled graphs' guards and captured CUDA graphs stay valid) are put
back however the block exits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch


@contextlib.contextmanager
def scoped_processors(unet, processors: Mapping[str, object]) -> Iterator[None]:
    """Install ``{attention module path: processor}`` for the block; restore the originals in ``finally``.

    Paths are the ``Attention`` modules' (``...transformer_blocks.0.attn1``); a name as
    ``unet.attn_processors`` spells it (with its ``.processor`` suffix) names the same module.
    """
    if not processors:
        yield
        return
    modules = {name: unet.get_submodule(name.removesuffix(".processor")) for name in processors}
    saved = {name: module.processor for name, module in modules.items()}
    try:
        for name, module in modules.items():
            module.set_processor(processors[name])
        yield
    finally:
        for name, module in modules.items():
            module.set_processor(saved[name])


@contextlib.contextmanager
def scoped_forward(modules: Mapping[str, torch.nn.Module], make: Callable) -> Iterator[None]:
    """Wrap ``module.forward`` of each module with ``make(module, current forward)``; restore after.

    A module whose forward was already wrapped on the instance (an outer patch) gets that wrapper
    back; one without gets its class's forward again.
    """
    had = {name: "forward" in vars(m) for name, m in modules.items()}
    saved = {name: m.forward for name, m in modules.items()}
    try:
        for name, m in modules.items():
            m.forward = make(m, saved[name])
        yield
    finally:
        for name, m in modules.items():
            if had[name]:
                m.forward = saved[name]
            else:
                vars(m).pop("forward", None)


def wrapped_forward(module: torch.nn.Module, wrap: Callable):
    """``module.forward = wrap(current forward)`` for the block (one module, ``scoped_forward``)."""
    return scoped_forward({"module": module}, lambda _m, inner: wrap(inner))
