"""Visual Style Prompting with swapping self-attention (Jeong et al., arXiv 2402.12974).

- Sec. 4, "Swapping self-attention" (Eq. 4): in the configured self-attention layers (default:
  the late ones, ``blocks.VSP_LAYERS`` = all of ``up_blocks.1``, the official config's
  ``activate_layer_indices``), every target keeps its own queries and attends to the reference's
  keys and values *instead of* its own, in both CFG halves, during the configured fraction of
  the steps (``swap_start``..``swap_end``, default all).
- Real reference (the official ``vsp_real_script.py``; "stochastic encoding" in StyleKeeper,
  arXiv 2510.06827): no inversion. The reference row of the batch is re-noised before every step
  from its clean VAE latent with ``scheduler.add_noise(z0, eps, t)`` (one ``eps`` drawn from the
  seed); it is conditioned on ``reference_prompt`` in both CFG halves (``use_prompt_as_null``).
- Colour calibration (the official DDIM scheduler's ``fit_mode="channel"``): for 100 < t < 150 the
  predicted x0 of every target is AdaIN-matched per channel to the reference latent, and the DDIM
  step is recomposed from the calibrated x0 and the model's noise estimate.

Sampling uses DDIM, as the paper. The IP-Adapter stays off (all scales 0).
"""

from __future__ import annotations

import functools

import torch

from .. import blocks
from ..inversion import ddim_scheduler, encode_latents
from . import _common
from .attention import adain_channels, swapped_attention
from .processors import PatchState, SelfAttentionPatch

CALIBRATION_WINDOW = (100, 150)  # timesteps (of 1000) where x0 is calibrated, exclusive


def layers(model, req) -> list[str]:
    names = req.attention_layers.split(",") if req.attention_layers else blocks.VSP_LAYERS
    return blocks.self_attention_layers(model.modules, names)


def swap_active(i: int, steps: int, start: float, end: float) -> bool:
    """Whether step ``i`` (0-based) of ``steps`` lies in the fraction ``[start, end)`` (``end=1`` includes the last)."""
    return start * steps <= i < end * steps


def recompose_ddim(prev: torch.Tensor, x0: torch.Tensor, x0_new: torch.Tensor, alpha_prev: float) -> torch.Tensor:
    """A deterministic DDIM step (eta 0) with its predicted x0 replaced: all tensors ``[N, C, h, w]``.

    ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps``: changing x0 at fixed eps moves ``x_prev`` by
    ``sqrt(a_prev) (x0_new - x0)``.
    """
    return prev + alpha_prev**0.5 * (x0_new - x0)


def calibrate(scheduler, z0: torch.Tensor, window=CALIBRATION_WINDOW):
    """Wrap ``scheduler.step`` (a fresh ``DDIMScheduler`` used for one call) with colour calibration.

    Rows 1.. (the targets) get their predicted x0 AdaIN-matched per channel to ``z0`` ``[1, C, h, w]``
    when ``window[0] < t < window[1]``; row 0 (the reference) is left alone.
    """
    original = scheduler.step

    @functools.wraps(original)
    def step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        out = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        prev, x0 = out.prev_sample, out.pred_original_sample
        t = int(timestep)
        if window[0] < t < window[1] and kwargs.get("eta", 0.0) == 0.0:
            prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
            alpha_prev = float(scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod)
            x0_new = x0.clone()
            x0_new[1:] = adain_channels(x0[1:].float(), z0.float()).to(x0.dtype)
            prev = recompose_ddim(prev, x0, x0_new, alpha_prev)
            x0 = x0_new
            scheduler.calibrated_steps = getattr(scheduler, "calibrated_steps", 0) + 1
        if not return_dict:
            return (prev, x0)
        return type(out)(prev_sample=prev, pred_original_sample=x0)

    scheduler.step = step
    return scheduler


def run(model, req, *, style_images=None, on_step=None):
    pipe = model.pipe
    # 1. Inputs (fail before any model runs).
    st = _common.setup(model, req)
    ref = _common.reference_image(model, req, style_images)
    patched = layers(model, req)

    # 2. The reference's clean latent and its re-noising schedule (DDIM's timesteps for this call).
    z0 = encode_latents(pipe, ref, st.width, st.height)  # [1, C, h, w]
    scheduler = ddim_scheduler(pipe)
    probe = ddim_scheduler(pipe)
    probe.set_timesteps(req.steps, device=model.device)
    timesteps = probe.timesteps
    n, do_cfg = req.num_images, req.guidance > 1.0
    from diffusers.utils.torch_utils import randn_tensor

    gen = st.generator()
    noise = randn_tensor((n, *z0.shape[1:]), generator=gen, device=model.device, dtype=model.dtype)
    ref_eps = randn_tensor(z0.shape, generator=gen, device=model.device, dtype=model.dtype)

    def noisy_reference(i: int) -> torch.Tensor:
        return probe.add_noise(z0, ref_eps, timesteps[i : i + 1])

    latents = torch.cat([noisy_reference(0), noise])

    # 3. Prompts: the reference row is conditioned on its description in both CFG halves.
    pe, npe, pooled, npooled = _common.encode_batch(pipe, [req.reference_prompt] + [req.prompt] * n,
                                                    req.negative_prompt, do_cfg)
    if do_cfg:
        npe, npooled = npe.clone(), npooled.clone()
        npe[:1], npooled[:1] = pe[:1], pooled[:1]

    # 4. Swap in the configured layers during the configured steps; the reference row is re-noised.
    state = PatchState(group=1 + n, active=swap_active(0, req.steps, req.swap_start, req.swap_end))

    def renoise(i: int, lat: torch.Tensor) -> torch.Tensor:
        if i + 1 < req.steps:
            lat[:1] = noisy_reference(i + 1).to(lat)
            state.active = swap_active(i + 1, req.steps, req.swap_start, req.swap_end)
        return lat

    if req.color_calibration:
        calibrate(scheduler, z0)
    processors = {name: SelfAttentionPatch(swapped_attention, state) for name in patched}
    images = _common.sample_reference_batch(
        model, req, st, scheduler=scheduler, processors=processors, embeds=(pe, npe, pooled, npooled),
        latents=latents, update=renoise, on_step=on_step)

    extra = {"scheduler": "ddim", "patched_layers": len(patched),
             "attention_layers": req.attention_layers or ",".join(blocks.VSP_LAYERS),
             "calibrated_steps": getattr(scheduler, "calibrated_steps", 0)}
    return _common.finish(model, req, images[1:], st, reference=ref, extra=extra)
