"""DDIM inversion of a real image (Song et al. 2021, Sec. 4.3; used as in Mokady et al. 2023).

Shared by InstantStyle-Plus (start denoising from the content image's inverted latent) and
StyleAligned (the inverted trajectory of a real reference drives the reference row).

Inversion runs the deterministic DDIM update backwards: from the clean latent ``x_0`` it
steps up the noise levels of the forward sampler's timesteps, evaluating the UNet at the
target timestep on the current latent (the standard first-order approximation). diffusers'
``DDIMInverseScheduler`` does the update; the matching ``DDIMScheduler`` (same config) undoes it.
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


def sdxl_added_cond(pipe, prompt: str, negative_prompt: str | None, width: int, height: int, guidance: float,
                    ip_tokens: list[torch.Tensor] | None = None):
    """Text embeddings and SDXL's micro-conditioning for direct UNet calls (batch 1, CFG-stacked).

    If the UNet has an IP-Adapter attached, diffusers requires image embeddings on every call;
    ``ip_tokens`` defaults to zeros, to be used with all IP scales at 0 (no image influence).
    """
    do_cfg = guidance > 1.0
    # The execution device, not unet.device: under CPU offload the UNet waits on the CPU (seen on
    # an H200: "Expected all tensors to be on the same device" inside the UNet's added embedding).
    device = pipe._execution_device
    pe, npe, pooled, npooled = pipe.encode_prompt(
        prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=do_cfg,
        negative_prompt=negative_prompt,
    )
    # SDXL micro-conditioning: original size, crop top-left, target size.
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=pe.dtype)
    if do_cfg:
        pe, pooled, time_ids = torch.cat([npe, pe]), torch.cat([npooled, pooled]), torch.cat([time_ids, time_ids])
    added = {"text_embeds": pooled, "time_ids": time_ids}
    if getattr(pipe.unet.config, "encoder_hid_dim_type", None) == "ip_image_proj":
        if ip_tokens is None:
            ip_tokens = [
                torch.zeros(pe.shape[0], 1, proj.image_embeds.in_features if hasattr(proj, "image_embeds")
                            else proj.proj_in.in_features, device=device, dtype=pe.dtype)
                for proj in pipe.unet.encoder_hid_proj.image_projection_layers
            ]
        added["image_embeds"] = ip_tokens
    return pe, added


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
    from diffusers import DDIMInverseScheduler

    from .adapter import ip_processors, scoped_scales

    # 1. Clean latent.
    if isinstance(image_or_latents, torch.Tensor):
        x = image_or_latents.to(pipe._execution_device, pipe.unet.dtype)
        height, width = x.shape[-2] * pipe.vae_scale_factor, x.shape[-1] * pipe.vae_scale_factor
    else:
        size = pipe.default_sample_size * pipe.vae_scale_factor
        width, height = width or size, height or size
        x = encode_latents(pipe, image_or_latents, width, height)
    # 2. Conditioning and the inverse schedule.
    text, added = sdxl_added_cond(pipe, prompt, negative_prompt, width, height, guidance)
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config, **_EXACT)
    inverse.set_timesteps(steps, device=x.device)
    n_adapters = len(next(iter(ip_processors(pipe.unet).values())).scale) if ip_processors(pipe.unet) else 0
    scope = scoped_scales(pipe.unet, [{}] * n_adapters) if n_adapters else contextlib.nullcontext()
    # 3. Walk up the noise levels.
    latents, timesteps = [x], []
    with scope:
        for t in tqdm(inverse.timesteps, desc="DDIM inversion", disable=not progress, leave=False):
            inp = torch.cat([x, x]) if guidance > 1.0 else x
            eps = pipe.unet(inp, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
            if guidance > 1.0:
                uncond, cond = eps.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            x = inverse.step(eps, t, x).prev_sample
            latents.append(x)
            timesteps.append(int(t))
    return Inversion(latents, timesteps, prompt, guidance)
