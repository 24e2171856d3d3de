"""Plumbing shared by the baselines: sizes and seeds, neutral IP-Adapter inputs, batched prompts,
step callbacks, output metadata, and the reference-batch sampling call (its processors are
installed by ``processors.scoped``)."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from .. import adapter as adapter_mod
from ..errors import InstantStyleError
from ..images import attach_metadata, image_hash, load_image
from ..processors.scoped import scoped_processors
from ..schedulers import swap_scheduler


@dataclass
class Setup:
    seed: int
    width: int
    height: int

    def generator(self) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(self.seed)


def setup(model, req) -> Setup:
    """Size and seed, checked as ``InstantStyle.prepare`` does."""
    width, height = req.width or model.native_size, req.height or model.native_size
    unit = model.pipe.vae_scale_factor * 2 ** (len(model.pipe.unet.config.block_out_channels) - 1)
    if width % unit or height % unit:
        raise InstantStyleError(
            f"--width/--height {width}x{height}: must be multiples of {unit} for this model"
        )
    seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
    from ..prompts import warn_if_truncated

    warn_if_truncated(
        model.pipe.tokenizer,
        {
            "prompt": req.prompt,
            "negative prompt": req.negative_prompt,
            "reference prompt": req.reference_prompt,
        },
    )
    from ..schedulers import warn_if_high_guidance

    warn_if_high_guidance(req, model.ids)  # e.g. a Lightning base at StyleAligned's guidance 10
    return Setup(seed, width, height)


def reference_image(model, req, style_images: Sequence | None) -> Image.Image:
    """The one style image a pixel-space method (StyleAligned, VSP) works from."""
    refs = list(style_images or []) + list(req.style)
    if len(refs) != 1:
        raise InstantStyleError(
            f"--method {req.method} takes exactly one style image (got {len(refs)}); pass one --style IMAGE"
        )
    ref = refs[0]
    if isinstance(ref, str) and ref.startswith("@"):
        raise InstantStyleError(
            f"--method {req.method} needs the style image's pixels, but '{ref}' is a saved style (a CLIP "
            "embedding only); pass the image file itself"
        )
    if not isinstance(ref, (str, Image.Image)) and not hasattr(ref, "__fspath__"):
        raise InstantStyleError(
            f"--method {req.method} needs a style image (path or PIL image), got {type(ref).__name__}"
        )
    return load_image(ref, what="style image", max_pixels=model.styles.max_pixels)


def neutral_ip_embeds(model, do_cfg: bool) -> list[torch.Tensor]:
    """Zero image embeddings for methods that do not use the IP-Adapter (all its scales stay 0).

    diffusers requires image embeddings on every call once an IP-Adapter is attached; with every
    scale at 0 the adapter branch is skipped, so the UNet computes plain SDXL.
    """
    # [1, 1, D] for a global adapter; [1, 1, 1, H] (one patch) for a Plus adapter's Resampler.
    shape = (1, 1, *([1] if model.adapter_info.patch_features else []), model.adapter_info.clip_dim)
    zeros = torch.zeros(shape, device=model.device, dtype=model.dtype)
    return [torch.cat([zeros, zeros]) if do_cfg else zeros]


@contextlib.contextmanager
def ip_adapter_off(model) -> Iterator[None]:
    n = len(next(iter(adapter_mod.ip_processors(model.pipe.unet).values())).scale)
    with adapter_mod.scoped_scales(model.pipe.unet, [{}] * n):
        yield


@torch.no_grad()
def encode_batch(pipe, prompts: list[str], negative: str | None, do_cfg: bool):
    """Prompt embeddings for a batch of different prompts (one image each).

    Returns ``(pe, npe, pooled, npooled)``; negatives are ``None`` without CFG. diffusers' own
    ``encode_prompt`` handles ``negative_prompt=None`` (zeros for SDXL) exactly as a plain call.
    """
    pe, npe, pooled, npooled = pipe.encode_prompt(
        prompts,
        device=pipe.unet.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=do_cfg,
        negative_prompt=None if negative is None else [negative] * len(prompts),
    )
    return pe, npe, pooled, npooled


def step_callback(
    steps: int,
    on_step: Callable[[int, int], None] | None,
    update: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
):
    """A ``callback_on_step_end``: ``update(i, latents)`` may rewrite the latents after step ``i``."""

    def callback(_pipe, i, _t, kwargs):
        if update is not None:
            kwargs["latents"] = update(i, kwargs["latents"])
        if on_step is not None:
            on_step(i + 1, steps)
        return kwargs

    return callback


def finish(
    model,
    req,
    images: list[Image.Image],
    st: Setup,
    *,
    reference: Image.Image | None = None,
    extra: dict | None = None,
) -> list[Image.Image]:
    """Attach the full parameters to each output image."""
    params = {**model.output_params(req, seed=st.seed, width=st.width, height=st.height), **(extra or {})}
    if reference is not None:
        params["style_image_sha256"] = [image_hash(reference)]
    for i, image in enumerate(images):
        attach_metadata(image, {**params, "index": i})
    return images


def sample_reference_batch(
    model, req, st, *, scheduler, processors, embeds, latents, update, on_step=None, extra_patches=()
):
    """Sample the [reference, target x N] batch with self-attention ``processors`` patched in.

    Shared by StyleAligned and Visual Style Prompting: IP-Adapter off, ``scheduler`` and the
    processors (and ``extra_patches``, context managers) in place for the call only; ``update(i,
    latents)`` rewrites the reference row after each step. Returns every image, reference first.
    """
    pipe = model.pipe
    pe, npe, pooled, npooled = embeds
    with contextlib.ExitStack() as stack:
        stack.enter_context(ip_adapter_off(model))
        stack.enter_context(swap_scheduler(pipe, scheduler))
        stack.enter_context(scoped_processors(pipe.unet, processors))
        for patch in extra_patches:
            stack.enter_context(patch)
        stack.enter_context(torch.inference_mode())
        return pipe(
            prompt_embeds=pe,
            negative_prompt_embeds=npe,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=npooled,
            ip_adapter_image_embeds=neutral_ip_embeds(model, req.guidance > 1.0),
            num_inference_steps=req.steps,
            guidance_scale=req.guidance,
            width=st.width,
            height=st.height,
            latents=latents,
            callback_on_step_end=step_callback(req.steps, on_step, update),
        ).images
