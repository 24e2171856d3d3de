"""Task 2, ControlNet: ``StableDiffusionXLControlNetPipeline`` (SD1.5: ``StableDiffusionControlNetPipeline``)
with one ControlNet or a ``MultiControlNetModel``.

The control images are the user's, or derived from the content image (canny edges; the image
itself for tile), at the generation size (``inputs.py``, ``control.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import base, pipeline_for

if TYPE_CHECKING:
    from ..config import GenerateRequest
    from ..model import InstantStyle


def denoise(job: base.Job) -> list:
    pipe = job.model.derived_pipeline(pipeline_for(job.model.family, "controlnet"), job.controlnets)
    return job.run(pipe, image=job.control_image)


def run(model: InstantStyle, req: GenerateRequest, **images) -> list:
    return base.stylize(model, req, denoise, **images)
