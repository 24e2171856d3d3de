"""Task 6, InstantStyle-Plus (arXiv 2407.00788; instantX-research/InstantStyle-Plus ``infer_style.py``).

ReNoise inversion of the content image (plain DDIM selectable), then DDIM sampling from the
inverted latent on the *same* timesteps with ``StableDiffusionXLControlNetPipeline``: the tile
ControlNet on the content image (0.4), the loaded adapter on the content image at a low global
scale (0.2) and on the style image in the style block only (1.2), guidance 5 and the authors'
negative prompt. The authors load the global ViT-H adapter ``ip-adapter_sdxl_vit-h`` with the
ViT-H encoder for both; we use whichever adapter the model loaded, as a second adapter that shares
every weight with the first (``shared_second_adapter``). ``--adapter
h94/IP-Adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors`` is the authors' setup (it implies
``--image-encoder h94/IP-Adapter/models/image_encoder``; ``--adapter tiny-vit-h`` on the tiny
models); the default bigG ``ip-adapter_sdxl`` and an IP-Adapter Plus run too (with Plus both images
go through the Resampler and the content adapter's unconditional half is the all-zero image's
features, as diffusers; docs/adapters.md). The authors' optional CSD style guidance (off in their script) is
not implemented. Sizes as the authors' ``resize_img`` (``sizes.plus_size``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .. import embeddings
from ..adapter import ip_processors
from ..config import DEFAULT_RENOISE_STEPS
from ..errors import InstantStyleError
from ..inversion import ddim_scheduler, invert
from ..schedulers import swap_scheduler
from . import base

if TYPE_CHECKING:
    from ..config import GenerateRequest
    from ..model import InstantStyle


def renoise_settings(req: GenerateRequest) -> dict:
    return {
        "renoise_steps": DEFAULT_RENOISE_STEPS if req.renoise_steps is None else req.renoise_steps,
        "noise_regularization": True if req.noise_regularization is None else req.noise_regularization,
    }


def check_same_timesteps(inversion, scheduler, steps: int) -> None:
    """The forward sampler must retrace the inversion's timesteps exactly (one line otherwise)."""
    scheduler.set_timesteps(steps)
    forward = [int(t) for t in scheduler.timesteps]
    if forward != inversion.timesteps[::-1]:
        raise InstantStyleError(
            f"InstantStyle-Plus: the inversion ran on timesteps {inversion.timesteps[-1]}..."
            f"{inversion.timesteps[0]} but the generation would run on {forward[0]}...{forward[-1]}; "
            "use the same --steps for both"
        )


@contextlib.contextmanager
def shared_second_adapter(unet):
    """A second IP-Adapter that shares every weight of the first, for the duration of the block.

    Appends the first adapter's image projection and each processor's ``to_k_ip``/``to_v_ip``
    *modules* (the same objects, not copies) as adapter 2, so two images can go through one
    adapter at different scales: no memory beyond a few list entries, nothing loaded twice.
    Removed in ``finally``, so the model is left with exactly one adapter.
    """
    procs = ip_processors(unet)
    layers = unet.encoder_hid_proj.image_projection_layers
    if len(layers) != 1:
        raise InstantStyleError(
            f"InstantStyle-Plus needs exactly one attached IP-Adapter ({len(layers)} found)"
        )
    layers.append(layers[0])
    for proc in procs.values():
        proc.to_k_ip.append(proc.to_k_ip[0])
        proc.to_v_ip.append(proc.to_v_ip[0])
        proc.num_tokens = [*proc.num_tokens, proc.num_tokens[0]]
        proc.scale = [*proc.scale, 0.0]
    try:
        yield
    finally:
        del layers[-1]
        for proc in procs.values():
            del proc.to_k_ip[-1]
            del proc.to_v_ip[-1]
            proc.num_tokens = proc.num_tokens[:-1]
            proc.scale = proc.scale[:-1]


def denoise(job: base.Job) -> list:
    """Invert the content, then denoise from it with the tile ControlNet and two adapters."""
    model, prep, inputs = job.model, job.prep, job.inputs
    req = prep.request
    method = req.effective_inversion
    prep.params.update(
        content_ip_scale=req.effective_content_ip_scale,
        inversion_steps=req.steps,
        inversion_prompt=req.inversion_prompt or req.prompt,
        inversion=method,
        **(renoise_settings(req) if method == "renoise" else {}),
    )
    # 4a. Inversion of the content image (adapters at 0, guidance 1 = the authors' 0, content prompt),
    #     on the timesteps the generation uses.
    inversion = invert(
        model.pipe,
        inputs.content,
        req.inversion_prompt or req.prompt,
        method=method,
        steps=req.steps,
        guidance=1.0,
        negative_prompt=None,
        width=inputs.width,
        height=inputs.height,
        seed=prep.seed,
        progress=not getattr(model.pipe, "_progress_bar_config", {}).get("disable", False),
        **(renoise_settings(req) if method == "renoise" else {}),
    )
    scheduler = ddim_scheduler(model.pipe)
    check_same_timesteps(inversion, ddim_scheduler(model.pipe), req.steps)
    # 4b. Adapter 2 = the same adapter on the content image, global low scale, every block.
    content_embed = model.encode_style([inputs.content]).embeds  # [1, *F]
    uncond = model.styles.unconditional()  # zeros (global features) or the all-zero image's (patch)
    prep.ip_embeds = [
        prep.ip_embeds[0],
        embeddings.with_unconditional(content_embed, req.guidance > 1.0, uncond).to(
            model.device, model.dtype
        ),
    ]
    all_procs = {name: req.effective_content_ip_scale for name in ip_processors(model.pipe.unet)}
    job.run_kwargs["scale_maps"] = [job.run_kwargs["scale_maps"][0], all_procs]
    if "cross_attention_kwargs" in job.run_kwargs:  # regional style masks: the content adapter is unmasked
        job.run_kwargs["cross_attention_kwargs"]["ip_adapter_masks"].append(None)
    # 4c. DDIM from the inverted latent.
    pipe = model.derived_pipeline("StableDiffusionXLControlNetPipeline", job.controlnets)
    with shared_second_adapter(model.pipe.unet), swap_scheduler(pipe, scheduler):
        latents = inversion.noisy.repeat(req.num_images, 1, 1, 1)
        return job.run(pipe, image=job.control_image, latents=latents)


def run(model: InstantStyle, req: GenerateRequest, **images) -> list:
    return base.stylize(model, req, denoise, **images)
