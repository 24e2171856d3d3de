"""Inversion of a real image: plain DDIM (Song et al. 2021, Sec. 4.3; as in Mokady et al. 2023) and
ReNoise (Garibi et al., arXiv 2403.14602).

Shared by InstantStyle-Plus (start denoising from the content image's inverted latent; the
authors invert with ReNoise) and StyleAligned (the DDIM-inverted trajectory of a real reference
drives the reference row).

Plain DDIM inversion runs the deterministic DDIM update backwards: from the clean latent ``x_0``
it steps up the noise levels of the forward sampler's timesteps, evaluating the UNet at the
target timestep on the current latent (the standard first-order approximation). diffusers'
``DDIMInverseScheduler`` does the update; the matching ``DDIMScheduler`` (same config) undoes it.

ReNoise (paper Sec. 3-4; garibida/ReNoise-Inversion ``src/renoise_inversion.py``, with the
settings InstantStyle-Plus's ``infer_style.py`` passes) refines each step by fixed-point
iteration: after the DDIM step gives an estimate of the noisier latent, the UNet is evaluated
*there* and the step is redone from the same latent, ``renoise_steps`` times (Plus: 1). For the
last steps (t < 250, at most 5 iterations) the noise estimates of the iterations are averaged,
and each estimate is regularised (Sec. 4.2, after pix2pix-zero): 4 rounds of a gradient step on a
patch-wise KL term against the prediction at the forward-noised ``x_0`` (lambda 0.065) and 5
random-roll steps on a multi-scale auto-correlation term (lambda 20). Elsewhere the authors'
averaging window (iterations 8-10) is never reached with one renoise step. Noise correction is
off, as in Plus. The forward noise and the rolls come from ``seed``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

# No clipping of the predicted x0 and alpha_0 = 1 on both sides, so the two samplers are exact
# inverses of each other whenever the UNet's prediction does not depend on the latent.
_EXACT = {"clip_sample": False, "set_alpha_to_one": True}


@dataclass
class Inversion:
    """An inverted image: its latents from clean to noisiest, and how to undo it."""

    latents: list[torch.Tensor]  # [x_0, x_t1, ..., x_T], steps + 1 entries, each [1, C, h, w]
    timesteps: list[int]  # inversion order (ascending); the forward DDIM sampler uses them reversed
    prompt: str
    guidance: float

    @property
    def noisy(self) -> torch.Tensor:
        """``x_T``: pass as ``latents=`` to a pipeline running ``ddim_scheduler(pipe)``."""
        return self.latents[-1]

    @property
    def clean(self) -> torch.Tensor:
        return self.latents[0]

    def at_forward_step(self, i: int) -> torch.Tensor:
        """Latent the forward sampler should hold *before* its step ``i`` (0 = the noisiest)."""
        return self.latents[len(self.latents) - 1 - i]


def ddim_scheduler(pipe):
    """A ``DDIMScheduler`` with the pipeline's noise schedule (the inverse of ``ddim_invert``)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(pipe.scheduler.config, **_EXACT)


@contextlib.contextmanager
def _vae_fp32_if_needed(vae):
    """SDXL's VAE overflows in fp16 (``force_upcast``); upcast for the call, then restore."""
    dtype = vae.dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(dtype=dtype)


@torch.no_grad()
def encode_latents(pipe, image, width: int, height: int) -> torch.Tensor:
    """VAE latent ``[1, 4, H/8, W/8]`` of a PIL image resized to ``width`` x ``height`` (posterior mean)."""
    with _vae_fp32_if_needed(pipe.vae):
        pixels = pipe.image_processor.preprocess(image, height=height, width=width)
        # The execution device, not vae.device: under CPU offload the VAE sits on the CPU until
        # its hook moves it for encode(), and the hook does not move the input.
        pixels = pixels.to(pipe._execution_device, pipe.vae.dtype)
        latents = pipe.vae.encode(pixels).latent_dist.mean
    return (latents * pipe.vae.config.scaling_factor).to(pipe.unet.dtype)


def sdxl_added_cond(
    pipe,
    prompt: str,
    negative_prompt: str | None,
    width: int,
    height: int,
    guidance: float,
    ip_tokens: list[torch.Tensor] | None = None,
):
    """Text embeddings and SDXL's micro-conditioning for direct UNet calls (batch 1, CFG-stacked).

    If the UNet has an IP-Adapter attached, diffusers requires image embeddings on every call;
    ``ip_tokens`` defaults to zeros, to be used with all IP scales at 0 (no image influence).
    """
    do_cfg = guidance > 1.0
    # The execution device, not unet.device: under CPU offload the UNet waits on the CPU (seen on
    # an H200: "Expected all tensors to be on the same device" inside the UNet's added embedding).
    device = pipe._execution_device
    pe, npe, pooled, npooled = pipe.encode_prompt(
        prompt,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=do_cfg,
        negative_prompt=negative_prompt,
    )
    # SDXL micro-conditioning: original size, crop top-left, target size.
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=pe.dtype)
    if do_cfg:
        pe, pooled, time_ids = (
            torch.cat([npe, pe]),
            torch.cat([npooled, pooled]),
            torch.cat([time_ids, time_ids]),
        )
    added = {"text_embeds": pooled, "time_ids": time_ids}
    if getattr(pipe.unet.config, "encoder_hid_dim_type", None) == "ip_image_proj":
        if ip_tokens is None:
            # [B, 1, D] for a global adapter's ImageProjection, [B, 1, 1, H] (one patch) for a Resampler
            ip_tokens = [
                torch.zeros(
                    pe.shape[0],
                    1,
                    *(
                        (proj.image_embeds.in_features,)
                        if hasattr(proj, "image_embeds")
                        else (1, proj.proj_in.in_features)
                    ),
                    device=device,
                    dtype=pe.dtype,
                )
                for proj in pipe.unet.encoder_hid_proj.image_projection_layers
            ]
        added["image_embeds"] = ip_tokens
    return pe, added


def _prepare(pipe, image_or_latents, prompt, negative_prompt, width, height, guidance, steps):
    """What every inversion starts from: the clean latent, the prompt's conditioning, the inverse DDIM
    schedule at ``steps``, a guided noise predictor, and a scope holding any IP-Adapter at scale 0."""
    from diffusers import DDIMInverseScheduler

    from .adapter import ip_processors, scoped_scales

    if isinstance(image_or_latents, torch.Tensor):
        x = image_or_latents.to(pipe._execution_device, pipe.unet.dtype)
        height, width = x.shape[-2] * pipe.vae_scale_factor, x.shape[-1] * pipe.vae_scale_factor
    else:
        size = pipe.default_sample_size * pipe.vae_scale_factor
        width, height = width or size, height or size
        x = encode_latents(pipe, image_or_latents, width, height)
    text, added = sdxl_added_cond(pipe, prompt, negative_prompt, width, height, guidance)
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config, **_EXACT)
    inverse.set_timesteps(steps, device=x.device)

    def predict(latent, t):
        inp = torch.cat([latent, latent]) if guidance > 1.0 else latent
        eps = pipe.unet(inp, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
        if guidance > 1.0:
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
        return eps

    n_adapters = len(next(iter(ip_processors(pipe.unet).values())).scale) if ip_processors(pipe.unet) else 0
    scope = scoped_scales(pipe.unet, [{}] * n_adapters) if n_adapters else contextlib.nullcontext()
    return x, inverse, predict, scope


@torch.no_grad()
def ddim_invert(
    pipe,
    image_or_latents,
    prompt: str,
    *,
    steps: int = 50,
    guidance: float = 1.0,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
    progress: bool = True,
) -> Inversion:
    """Invert a PIL image (or a clean latent ``[1, 4, h, w]``) with DDIM, conditioned on ``prompt``.

    Any IP-Adapter on the UNet is held at scale 0 for the duration (restored afterwards), so the
    inversion depends on the image and the prompt only.
    """
    # 1. Clean latent, conditioning, the inverse schedule and the IP-Adapter held at 0.
    x, inverse, predict, scope = _prepare(
        pipe, image_or_latents, prompt, negative_prompt, width, height, guidance, steps
    )
    # 2. Walk up the noise levels.
    latents, timesteps = [x], []
    with scope:
        for t in tqdm(inverse.timesteps, desc="DDIM inversion", disable=not progress, leave=False):
            x = inverse.step(predict(x, t), t, x).prev_sample
            latents.append(x)
            timesteps.append(int(t))
    return Inversion(latents, timesteps, prompt, guidance)


# ---------------------------------------------------------------------- ReNoise

RENOISE_LAST_STEPS_T = 250  # below this timestep: averaging window (0, 5), at most 5 renoise iterations
AVERAGE_FIRST, AVERAGE_REST = (0, 5), (8, 10)  # the authors' average_first_step_range / average_step_range
MAX_RENOISE_LAST = 5  # max_num_renoise_steps_first_step
LAMBDA_KL, LAMBDA_AC, REG_STEPS, AC_ROLLS = 0.065, 20.0, 4, 5  # noise_regularization_* defaults


def patch_kl(x: torch.Tensor, ref: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Sum over ``patch x patch`` tiles and channels of |KL-like divergence| of Gaussian fits.

    ``x``, ``ref``: ``[1, C, H, W]`` (H, W multiples of ``patch``). Per tile and channel: mean and
    unbiased variance over its pixels, ``|log(v_r / v_x) + (v_x + (m_x - m_r)^2) / v_r - 1|``.
    """

    def stats(t):
        c = t.shape[1]
        tiles = t.reshape(c, t.shape[2] // patch, patch, t.shape[3] // patch, patch).permute(1, 3, 0, 2, 4)
        tiles = tiles.reshape(-1, c, patch * patch)  # [tiles, C, p*p]
        return tiles.mean(-1), tiles.var(-1)

    eps = 1e-6
    mu_x, var_x = stats(x)
    mu_r, var_r = stats(ref)
    kl = torch.log((var_r + eps) / (var_x + eps)) + (var_x + (mu_x - mu_r) ** 2) / (var_r + eps) - 1
    return kl.abs().sum()


def autocorrelation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multi-scale auto-correlation of each channel of ``x`` ``[1, C, H, W]`` at random shifts.

    For each channel: the squared mean of ``x * roll(x, k)`` along H and along W for a random
    ``k < H / 2``, then the same on a 2x average-pooled copy, until the side is 8 or less.
    """
    loss = x.new_zeros(())
    for c in range(x.shape[1]):
        z = x[:, c : c + 1]
        while True:
            k = int(torch.randint(0, max(z.shape[2] // 2, 1), (1,), generator=generator))
            loss = (
                loss + (z * torch.roll(z, k, dims=2)).mean() ** 2 + (z * torch.roll(z, k, dims=3)).mean() ** 2
            )
            if z.shape[2] <= 8:
                break
            z = torch.nn.functional.avg_pool2d(z, 2)
    return loss


def regularize_noise(
    eps: torch.Tensor,
    eps_forward: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    lambda_kl: float = LAMBDA_KL,
    lambda_ac: float = LAMBDA_AC,
    steps: int = REG_STEPS,
    rolls: int = AC_ROLLS,
) -> torch.Tensor:
    """ReNoise's noise regularisation: gradient steps that make ``eps`` look like Gaussian noise."""
    dtype = eps.dtype
    with torch.inference_mode(False), torch.enable_grad():
        e = eps.detach().clone().float()
        ref = eps_forward.detach().clone().float()
        for _ in range(steps):
            if lambda_kl > 0:
                v = e.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(patch_kl(v, ref), v)
                e = e - lambda_kl * grad.clamp(-100, 100)
            if lambda_ac > 0:
                for _ in range(rolls):
                    v = e.clone().requires_grad_(True)
                    (grad,) = torch.autograd.grad(autocorrelation(v, generator), v)
                    e = e - lambda_ac * grad / rolls
            e = e.detach()
    return e.to(dtype)


@torch.no_grad()
def invert(
    pipe,
    image_or_latents,
    prompt: str,
    *,
    method: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    renoise_steps: int = 1,
    noise_regularization: bool = True,
    seed: int = 0,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
    progress: bool = True,
) -> Inversion:
    """Invert with ``method`` ``"ddim"`` (plain) or ``"renoise"`` (ReNoise, see the module docstring).

    The timesteps are those of ``ddim_scheduler(pipe)`` at ``steps`` (``Inversion.timesteps``), so a
    forward DDIM sampler at the same step count retraces them.
    """
    if method == "ddim":
        return ddim_invert(
            pipe,
            image_or_latents,
            prompt,
            steps=steps,
            guidance=guidance,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            progress=progress,
        )
    if method != "renoise":
        from .errors import InstantStyleError

        raise InstantStyleError(f"unknown inversion {method!r}; use renoise or ddim")
    x, inverse, predict, scope = _prepare(
        pipe, image_or_latents, prompt, negative_prompt, width, height, guidance, steps
    )
    forward = ddim_scheduler(pipe)
    gen = torch.Generator().manual_seed(seed)
    z0, noise = x, torch.randn(x.shape, generator=gen).to(x)

    latents, timesteps = [x], []
    with scope:
        for t in tqdm(inverse.timesteps, desc="ReNoise inversion", disable=not progress, leave=False):
            last = int(t) < RENOISE_LAST_STEPS_T
            window = AVERAGE_FIRST if last else AVERAGE_REST
            iterations = min(MAX_RENOISE_LAST, renoise_steps) if last else renoise_steps
            forward_eps: list = []  # the prediction at the forward-noised x_0, made when first needed

            def regularized(eps, t=t, forward_eps=forward_eps):
                if not forward_eps:
                    forward_eps.append(predict(forward.add_noise(z0, noise, t.reshape(1)), t))
                return regularize_noise(eps, forward_eps[0], gen)

            estimate, average, n_avg = x, None, 0
            for i in range(iterations + 1):
                eps = predict(estimate, t)
                if window[0] <= i < window[1]:
                    average = (
                        eps.clone()
                        if average is None
                        else average * (n_avg / (n_avg + 1)) + eps / (n_avg + 1)
                    )
                    n_avg += 1
                if i >= window[0] and noise_regularization:
                    eps = regularized(eps)
                estimate = inverse.step(eps, t, x).prev_sample
            if average is not None:
                if noise_regularization:
                    average = regularized(average)
                estimate = inverse.step(average, t, x).prev_sample
            x = estimate
            latents.append(x)
            timesteps.append(int(t))
    return Inversion(latents, timesteps, prompt, guidance)
