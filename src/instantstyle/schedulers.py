"""Samplers by name, each swapped in for one call only.

``SAMPLERS`` maps the request's ``scheduler`` names (``config.SCHEDULERS``) to a diffusers
scheduler class and its extra config; ``scoped_scheduler`` builds it from the pipeline's own
scheduler config and puts the original back afterwards, so no request leaks its sampler into the
next. ``swap_scheduler`` is the same scope for an already-built scheduler (DDIM for inversion).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

SAMPLERS: dict[str, tuple[str, dict]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}


@contextlib.contextmanager
def swap_scheduler(pipe, scheduler) -> Iterator:
    """Run the block with ``scheduler`` on ``pipe``, then put the original back (even on error)."""
    original = pipe.scheduler
    pipe.scheduler = scheduler
    try:
        yield scheduler
    finally:
        pipe.scheduler = original


@contextlib.contextmanager
def scoped_scheduler(pipe, name: str) -> Iterator:
    """The named sampler for one call (no state leaks between requests); SDXL's own is reused as is."""
    import diffusers

    cls_name, extra = SAMPLERS[name]
    if type(pipe.scheduler).__name__ == cls_name and not extra:
        yield pipe.scheduler
        return
    with swap_scheduler(pipe, getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)) as s:
        yield s
