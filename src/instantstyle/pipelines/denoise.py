"""Step 5 of every InstantStyle generation: the denoising loop of one diffusers pipeline (SDXL or SD1.5).

``pipe`` is the loaded model's own ``StableDiffusionXLPipeline`` / ``StableDiffusionPipeline`` or one derived from it
(``InstantStyle.derived_pipeline``); the call runs with, all scoped to it and undone afterwards:
the IP-Adapter's per-block scales (``adapter.scoped_scales``), the slots sharing its weights
(``injection.shared_slots``), the request's sampler (``schedulers.scoped_scheduler``, with its
timestep spacing; custom timesteps and eta go to the call), the fast path (``fast.scope``) and the
style's step window. Each PIL output gets its parameters, and the sampler it really ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .. import adapter as adapter_mod
from .. import fast as fast_path
from .. import injection, schedulers, steps
from ..errors import InstantStyleError
from ..fast import cfg as fast_cfg
from ..images import attach_metadata

if TYPE_CHECKING:
    from ..model import InstantStyle
    from .prepare import Prepared


def run(
    model: InstantStyle,
    pipe,
    prep: Prepared,
    *,
    on_step=None,
    scale_maps: list[dict] | None = None,
    **pipe_kwargs,
) -> list:
    """The denoising loop of ``pipe`` for ``prep``; ``pipe_kwargs`` go to the pipeline call."""
    req = prep.request
    model.lay_out(pipe)
    schedulers.warn_if_high_guidance(req, model.ids)  # guidance > 2 on a few-step model
    kwargs = dict(
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        ip_adapter_image_embeds=prep.ip_embeds,
        num_inference_steps=req.steps,
        guidance_scale=req.guidance,
        width=prep.width,
        height=prep.height,
        num_images_per_prompt=req.num_images,
        generator=prep.generator(),
        # Few-step sampling (schedulers.SAMPLERS says who reads what): custom timesteps replace
        # num_inference_steps' schedule (the request checked they agree); eta reaches DDIM/TCD.
        **({"timesteps": list(req.timesteps)} if req.timesteps else {}),
        **({"eta": req.eta} if req.eta is not None else {}),
    )
    window = injection.StepWindow(req.style_window)  # the style only inside --style-window
    callback, tensor_inputs = _step_callbacks(model, pipe, prep, on_step, window, pipe_kwargs)
    kwargs.update(pipe_kwargs)
    if callback is not None:
        kwargs["callback_on_step_end"] = callback
        kwargs["callback_on_step_end_tensor_inputs"] = list(dict.fromkeys(["latents", *tensor_inputs]))
    output_type = kwargs.get("output_type", "pil")
    n_loaded = len(next(iter(adapter_mod.ip_processors(pipe.unet).values())).scale)
    slots, scales = prep.slots, scale_maps or prep.scales
    masked = (kwargs.get("cross_attention_kwargs") or {}).get("ip_adapter_masks") is not None
    if fast_path.uniform_ip(fast_path.options_for(model.speed, model.device)) and not masked:
        # One slot structure for every preset and extra image: one CUDA graph / compiled UNet.
        slots, kwargs["ip_adapter_image_embeds"], scales = injection.fixed_slots(
            slots, prep.ip_embeds, scales, n_loaded
        )
    with (
        injection.shared_slots(pipe.unet, slots[n_loaded:]),
        adapter_mod.scoped_scales(pipe.unet, scales),
        schedulers.scoped_scheduler(pipe, req.scheduler, timestep_spacing=req.timestep_spacing) as sampler,
    ):
        with (
            torch.inference_mode(),
            fast_path.scope(pipe, model.speed, kwargs.get("cross_attention_kwargs")) as used,
            window.active_in(pipe.unet),
        ):
            # 5b. The VAE decode by the fast path (bf16 twin, channels-last, compiled) when it applies.
            decoder = fast_path.fast_decoder(pipe, used) if output_type in ("pil", "np", "pt") else None
            if decoder is not None:
                kwargs["output_type"] = "latent"
            images = pipe(**kwargs).images
            if decoder is not None:
                images = fast_path.decode_latents(pipe, images, decoder, used, output_type)
        ran = schedulers.used(sampler, req.scheduler)  # the class, spacing and timesteps really run
    if output_type == "pil":
        approx = model.speed.approximations()
        for i, image in enumerate(images):
            attach_metadata(
                image,
                {
                    **prep.params,
                    **({"approximations": approx} if approx else {}),
                    "sampler_used": ran,
                    "index": i,
                    "image_seed": prep.seed + i,
                },
            )
    return images


def _step_callbacks(
    model: InstantStyle, pipe, prep: Prepared, on_step, window: injection.StepWindow, pipe_kwargs: dict
):
    """One ``callback_on_step_end`` for the call (or None) and the tensors it reads.

    In order: the style window, progress, the caller's own callback (taken out of
    ``pipe_kwargs``), CFG truncation.
    """
    req = prep.request
    callbacks = [
        None if window.is_full else window,
        steps.progress(req.steps, on_step),
        pipe_kwargs.pop("callback_on_step_end", None),
    ]
    tensor_inputs = list(pipe_kwargs.pop("callback_on_step_end_tensor_inputs", None) or [])
    speed = model.speed
    if speed.cfg_truncation > 0 and req.guidance > 1.0:
        if "uncond" in prep.slots:
            raise InstantStyleError(
                "--mode precise works through the unconditional branch, which --cfg-truncation "
                "drops; use one or the other"
            )
        # 5a. CFG truncation (approximation): after the switch step, the conditional half only.
        if (
            type(pipe).__name__ != "StableDiffusionXLPipeline"
        ):  # it slices SDXL's add_text_embeds/add_time_ids
            raise InstantStyleError(
                f"--cfg-truncation works for SDXL text-to-image only, not {type(pipe).__name__}; "
                "drop it (or use --speed max-tuned) for this request"
            )
        callbacks.append(fast_cfg.callback(req.steps, speed.cfg_truncation))
        tensor_inputs += list(fast_cfg.TENSOR_INPUTS)
    return steps.chain(*callbacks), tensor_inputs
