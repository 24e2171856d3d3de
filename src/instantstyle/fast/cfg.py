"""CFG truncation: the unconditional half dropped for the last part of the schedule (approximation).

Late in sampling the conditional and unconditional predictions converge, so classifier-free
guidance there buys little; dropping the unconditional batch halves the cost of those steps.
This is the recipe in diffusers' documentation ("Pipeline callbacks", dynamic classifier-free
guidance: at a chosen step, set ``pipe._guidance_scale = 0`` and keep the conditional half of
``prompt_embeds``; for SDXL also ``add_text_embeds`` and ``add_time_ids``), with the IP-Adapter's
image embeddings, which the SDXL pipeline does not pass to callbacks, sliced by the fast path's
UNet wrapper (``cond_half``). ``fraction`` of the steps, counted from the end, run without CFG.
"""

from __future__ import annotations

import math

import torch

TENSOR_INPUTS = ("prompt_embeds", "add_text_embeds", "add_time_ids")


def first_truncated_step(steps: int, fraction: float) -> int:
    """Index of the first step without the unconditional half (``steps`` when none is dropped)."""
    return steps - int(math.floor(steps * fraction + 1e-9))


def callback(steps: int, fraction: float):
    """A ``callback_on_step_end`` that switches CFG off before ``first_truncated_step``."""
    start = first_truncated_step(steps, fraction)

    def on_step_end(pipe, i, _t, kwargs):
        if i + 1 == start and pipe.do_classifier_free_guidance:
            for name in TENSOR_INPUTS:
                if kwargs.get(name) is not None:
                    kwargs[name] = kwargs[name].chunk(2)[-1]  # [neg, pos] -> pos
            pipe._guidance_scale = 0.0
        return kwargs

    return on_step_end


class CondHalf:
    """UNet-call argument fix for truncated steps: image embeddings of the CFG batch ``[neg, pos]``
    become their ``pos`` half when the latents are half the batch. The views are cached per input,
    so a step-invariant input stays the same tensor (``context.ContextCache`` keys on identity)."""

    def __init__(self):
        self._views: dict = {}

    def __call__(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        sample = args[0] if args else kwargs.get("sample")
        added = kwargs.get("added_cond_kwargs")
        embeds = (added or {}).get("image_embeds")
        if not isinstance(sample, torch.Tensor) or not isinstance(embeds, (list, tuple)):
            return args, kwargs
        batch = sample.shape[0]
        if not any(e.shape[0] == 2 * batch for e in embeds):
            return args, kwargs
        halves = []
        for e in embeds:
            if e.shape[0] != 2 * batch:
                halves.append(e)
                continue
            key = (id(e), e.data_ptr(), tuple(e.shape))
            view = self._views.get(key)
            if view is None:
                view = self._views[key] = (e, e[batch:])  # keeps e alive: its id stays unique
            halves.append(view[1])
        return args, {**kwargs, "added_cond_kwargs": {**added, "image_embeds": halves}}
