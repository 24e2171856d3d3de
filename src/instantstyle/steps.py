"""Step callbacks: diffusers' ``callback_on_step_end(pipe, i, t, kwargs) -> kwargs``, built once.

``progress`` reports ``on_step(done, total)`` after each step (and may rewrite the latents first);
``chain`` runs several callbacks as one, in order, as a pipeline call takes only one.
"""

from __future__ import annotations

from collections.abc import Callable

StepCallback = Callable  # (pipe, i, t, kwargs) -> kwargs


def progress(
    steps: int, on_step: Callable[[int, int], None] | None, update: Callable | None = None
) -> StepCallback | None:
    """A callback calling ``on_step(i + 1, steps)`` after step ``i``; ``update(i, latents)`` may rewrite
    the latents first. None when there is nothing to do."""
    if on_step is None and update is None:
        return None

    def callback(_pipe, i, _t, kwargs):
        if update is not None:
            kwargs["latents"] = update(i, kwargs["latents"])
        if on_step is not None:
            on_step(i + 1, steps)
        return kwargs

    return callback


def chain(*callbacks: StepCallback | None) -> StepCallback | None:
    """One ``callback_on_step_end`` running ``callbacks`` in order (None entries skipped)."""
    callbacks = [c for c in callbacks if c is not None]
    if len(callbacks) <= 1:
        return callbacks[0] if callbacks else None

    def on_step_end(pipe, i, t, kwargs):
        for c in callbacks:
            kwargs = c(pipe, i, t, kwargs)
        return kwargs

    return on_step_end
