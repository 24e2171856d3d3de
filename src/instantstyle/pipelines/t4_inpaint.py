"""Task 4, inpainting: ``StableDiffusionXLInpaintPipeline`` (``StableDiffusionXLControlNetInpaintPipeline``
with --control; SD1.5: ``StableDiffusionInpaintPipeline`` / ``StableDiffusionControlNetInpaintPipeline``).

The style is injected everywhere, as the InstantStyle inpainting script
(``inpaint_style="everywhere"``, the default), or only where the image is repainted
(``inpaint_style="mask"``: an IP-Adapter attention mask equal to the inpainting mask, set up by
``t5_regional.py``).
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
        pipe = model.derived_pipeline(pipeline_for(model.family, "controlnet-inpaint"), job.controlnets)
        job.run_kwargs["control_image"] = job.control_image
    else:
        pipe = model.derived_pipeline(pipeline_for(model.family, "inpaint"))
    return job.run(
        pipe, image=job.inputs.content, mask_image=job.inputs.mask, strength=req.effective_strength
    )


def run(model: InstantStyle, req: GenerateRequest, **images) -> list:
    return base.stylize(model, req, denoise, **images)
