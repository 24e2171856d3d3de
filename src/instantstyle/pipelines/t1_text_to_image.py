"""Task 1, text to image (InstantStyle, arXiv 2404.02733): diffusers' stock ``StableDiffusionXLPipeline``
(SD1.5: ``StableDiffusionPipeline``), the loaded model's own.

The style goes in as precomputed ``ip_adapter_image_embeds`` (content subtraction and
multi-reference mixing happen in CLIP space, before the adapter's projection, ``prepare.py``), and
the block restriction is a per-processor scale set for the call only (``denoise.py``). With style
masks the call goes through ``base.stylize`` for regional styles (``t5_regional.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import base

if TYPE_CHECKING:
    from ..config import GenerateRequest
    from ..model import InstantStyle


def run(
    model: InstantStyle,
    req: GenerateRequest,
    *,
    style_images=None,
    on_step=None,
    composition_image=None,
    negative_style_image=None,
    **images,
) -> list:
    if req.style_masks:  # regional styles
        return base.stylize(
            model,
            req,
            lambda job: job.run(model.pipe),
            style_images=style_images,
            on_step=on_step,
            composition_image=composition_image,
            negative_style_image=negative_style_image,
            **images,
        )
    prep = model.prepare(
        req, style_images, composition_image=composition_image, negative_style_image=negative_style_image
    )
    return model.run(model.pipe, prep, on_step=on_step)
