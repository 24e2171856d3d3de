"""Task 3, img2img: ``StableDiffusionXLImg2ImgPipeline`` (``StableDiffusionXLControlNetImg2ImgPipeline``
with --control): the content image re-drawn in the style, from ``--strength`` of the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import base

if TYPE_CHECKING:
    from ..config import GenerateRequest
    from ..model import InstantStyle


def denoise(job: base.Job) -> list:
    req, model = job.prep.request, job.model
    if job.controlnets:
        pipe = model.derived_pipeline("StableDiffusionXLControlNetImg2ImgPipeline", job.controlnets)
        job.run_kwargs["control_image"] = job.control_image
    else:
        pipe = model.derived_pipeline("StableDiffusionXLImg2ImgPipeline")
    return job.run(pipe, image=job.inputs.content, strength=req.effective_strength)


def run(model: InstantStyle, req: GenerateRequest, **images) -> list:
    return base.stylize(model, req, denoise, **images)
