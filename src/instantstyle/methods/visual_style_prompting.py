"""Visual Style Prompting with swapping self-attention (Jeong et al., arXiv 2402.12974).

Sources: the paper (Sec. 4) and the authors' code (naver-ai/Visual-Style-Prompting, Apache-2.0):
``vsp_real_script.py`` (a real reference), ``pipelines/pipeline_stable_diffusion_xl.py`` and
``schedulers/scheduling_ddim.py``. Defaults, each the authors':

- Sec. 4, "Swapping self-attention" (Eq. 4): in the configured self-attention layers (default:
  the late ones, ``blocks.VSP_LAYERS`` = all of ``up_blocks.1``, the scripts'
  ``activate_layer_indices=[[0, 0], [128, 140]]``), every target keeps its own queries and attends
  to the reference's keys and values *instead of* its own, in both CFG halves, during the
  configured fraction of the steps (``swap_start``..``swap_end``, default all: ``activate_step 50``
  of 50).
- Real reference (``vsp_real_script.py``; "stochastic encoding" in StyleKeeper, arXiv
  2510.06827): no inversion. Before every step the reference row is re-noised from its clean VAE
  latent with ``scheduler.add_noise(z0, eps, t)`` and a *fresh* ``eps`` each step (the script
  draws new noise every step; ours comes from the request's seed, so a seed reproduces it).
- Prompts: the reference row is conditioned on ``reference_prompt`` in the conditional half and
  on the null prompt in the unconditional half, like the targets (the authors encode the
  reference and target prompts separately, each with ``negative_prompt=None``); a user's
  ``negative_prompt`` goes to the targets only. The reference row's own update uses its
  conditional prediction alone (``use_prompt_as_null=True``).
- Colour calibration (the DDIM scheduler's ``fit_mode="channel"``, ``color_cal_start_t 150``,
  window 50): for 100 < t < 150 the predicted x0 of every target is AdaIN-matched per channel to
  the *reference row's predicted x0* at that step, and the DDIM step is recomposed from the
  calibrated x0 and the model's noise estimate.
- Guidance 7 (the scripts' ``--guidance_scale``) when the request gives none; 50 DDIM steps in
  the scripts (ours: the request's ``steps``). ``use_advanced_sampling`` (CFG 20 for 3 steps) is
  off in the real-image script and not offered.

Differences: the script re-encodes the image with a sampled VAE posterior each step; we use the
posterior mean once (the noise added dwarfs the posterior's spread). The reference prompt is
the user's (the script captions with BLIP-2). The IP-Adapter stays off (all scales 0).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .. import blocks
from ..inversion import ddim_scheduler, encode_latents
from ..processors.maths import adain_channels, swapped_attention
from ..processors.scoped import scoped_forward
from ..processors.self_attention import PatchState, SelfAttentionPatch
from . import _common

CALIBRATION_WINDOW = (100, 150)  # timesteps (of 1000) where x0 is calibrated, exclusive


def layers(model, req) -> list[str]:
    names = req.attention_layers.split(",") if req.attention_layers else blocks.VSP_LAYERS
    return blocks.self_attention_layers(model.modules, names)


def swap_active(i: int, steps: int, start: float, end: float) -> bool:
    """Whether step ``i`` (0-based) of ``steps`` lies in the fraction ``[start, end)`` (``end=1`` includes the last)."""
    return start * steps <= i < end * steps


def recompose_ddim(
    prev: torch.Tensor, x0: torch.Tensor, x0_new: torch.Tensor, alpha_prev: float
) -> torch.Tensor:
    """A deterministic DDIM step (eta 0) with its predicted x0 replaced: all tensors ``[N, C, h, w]``.

    ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps``: changing x0 at fixed eps moves ``x_prev`` by
    ``sqrt(a_prev) (x0_new - x0)``.
    """
    return prev + alpha_prev**0.5 * (x0_new - x0)


def calibrate(scheduler, window=CALIBRATION_WINDOW, reference_prediction=None):
    """Wrap ``scheduler.step`` (a fresh ``DDIMScheduler`` used for one call) for VSP's reference row.

    ``reference_prediction()``, when given, returns the reference row's conditional noise
    prediction of this step, which replaces its guided one (the authors' ``use_prompt_as_null``).
    When ``window[0] < t < window[1]``, rows 1.. (the targets) get their predicted x0 AdaIN-matched
    per channel to row 0's predicted x0 (the reference's), and the step is recomposed from it.
    """
    original = scheduler.step

    @functools.wraps(original)
    def step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        if reference_prediction is not None:
            cond = reference_prediction()
            if cond is not None:
                model_output = model_output.clone()
                model_output[:1] = cond.to(model_output)
        out = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        prev, x0 = out.prev_sample, out.pred_original_sample
        t = int(timestep)
        if window[0] < t < window[1] and kwargs.get("eta", 0.0) == 0.0:
            prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
            alpha_prev = float(
                scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
            )
            x0_new = x0.clone()
            x0_new[1:] = adain_channels(x0[1:].float(), x0[:1].float()).to(x0.dtype)
            prev = recompose_ddim(prev, x0, x0_new, alpha_prev)
            x0 = x0_new
            scheduler.calibrated_steps = getattr(scheduler, "calibrated_steps", 0) + 1
        if not return_dict:
            return (prev, x0)
        return type(out)(prev_sample=prev, pred_original_sample=x0)

    scheduler.step = step
    return scheduler


@contextlib.contextmanager
def conditional_reference_prediction(unet, group: int, do_cfg: bool):
    """Keep the UNet's conditional prediction for row 0 (the reference) of each call, scoped.

    Yields a function returning the latest one (``[1, C, h, w]``), or ``None`` without CFG (the
    prediction is then conditional already).
    """
    seen: list = [None]

    def make(_module, original):
        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            sample = out[0] if isinstance(out, tuple) else out.sample
            if do_cfg and sample.shape[0] == 2 * group:
                seen[0] = sample[group : group + 1].detach()
            return out

        return forward

    with scoped_forward({"unet": unet}, make):
        yield lambda: seen[0]


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

    def noisy_reference(i: int) -> torch.Tensor:
        """The reference re-noised to step ``i``'s level with fresh noise (drawn from the seed)."""
        eps = randn_tensor(z0.shape, generator=gen, device=model.device, dtype=model.dtype)
        return probe.add_noise(z0, eps, timesteps[i : i + 1])

    latents = torch.cat([noisy_reference(0), noise])

    # 3. Prompts: reference row = its description / the null prompt; targets = prompt / negative.
    ref_pe, ref_npe, ref_pooled, ref_npooled = _common.encode_batch(
        pipe, [req.reference_prompt], None, do_cfg
    )
    pe, npe, pooled, npooled = _common.encode_batch(pipe, [req.prompt] * n, req.negative_prompt, do_cfg)
    pe, pooled = torch.cat([ref_pe, pe]), torch.cat([ref_pooled, pooled])
    if do_cfg:
        npe, npooled = torch.cat([ref_npe, npe]), torch.cat([ref_npooled, npooled])

    # 4. Swap in the configured layers during the configured steps; the reference row is re-noised.
    state = PatchState(group=1 + n, active=swap_active(0, req.steps, req.swap_start, req.swap_end))

    def renoise(i: int, lat: torch.Tensor) -> torch.Tensor:
        if i + 1 < req.steps:
            lat[:1] = noisy_reference(i + 1).to(lat)
            state.active = swap_active(i + 1, req.steps, req.swap_start, req.swap_end)
        return lat

    processors = {name: SelfAttentionPatch(swapped_attention, state) for name in patched}
    with conditional_reference_prediction(pipe.unet, 1 + n, do_cfg) as reference_prediction:
        calibrate(scheduler, CALIBRATION_WINDOW if req.color_calibration else (0, 0), reference_prediction)
        images = _common.sample_reference_batch(
            model,
            req,
            st,
            scheduler=scheduler,
            processors=processors,
            embeds=(pe, npe, pooled, npooled),
            latents=latents,
            update=renoise,
            on_step=on_step,
        )

    extra = {
        "scheduler": "ddim",
        "patched_layers": len(patched),
        "attention_layers": req.attention_layers or ",".join(blocks.VSP_LAYERS),
        "calibrated_steps": getattr(scheduler, "calibrated_steps", 0),
    }
    return _common.finish(model, req, images[1:], st, reference=ref, extra=extra)
