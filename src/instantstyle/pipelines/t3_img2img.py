"""Task 3, img2img: ``StableDiffusionXLImg2ImgPipeline`` (``StableDiffusionXLControlNetImg2ImgPipeline``
with --control; SD1.5: ``StableDiffusionImg2ImgPipeline`` / ``StableDiffusionControlNetImg2ImgPipeline``):
the content image re-drawn in the style, from ``--strength`` of the way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import base, pipeline_for

if TYPE_CHECKING:
    from ..config import GenerateRequest
    from ..model import InstantStyle


def denoise(job: base.Job) -> list:
    req, model = job.prep.request, job.model
    if job.controlnets:
        pipe = model.derived_pipeline(pipeline_for(model.family, "controlnet-img2img"), job.controlnets)
        job.run_kwargs["control_image"] = job.control_image
    else:
        pipe = model.derived_pipeline(pipeline_for(model.family, "img2img"))
    return job.run(pipe, image=job.inputs.content, strength=req.effective_strength)


def run(model: InstantStyle, req: GenerateRequest, **images) -> list:
    return base.stylize(model, req, denoise, **images)
