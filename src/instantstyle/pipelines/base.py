"""What every task that goes beyond plain text-to-image shares (content image, ControlNets, regional styles).

``stylize`` reads as numbered steps: 1. every input image read and checked at the generation size
(``inputs.py``); 2. the style prepared at that size, its scales masked for regional styles
(``t5_regional.py``); 3. the ControlNets loaded, and everything recorded in the parameters; 4. the
task's own denoising (``denoise(model, job)``, given by the task module); 5. the outputs resized
back to the content image's exact aspect ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

from .. import control as control_mod
from ..config import GenerateRequest
from . import t5_regional
from .inputs import Inputs, load_inputs
from .prepare import Prepared

if TYPE_CHECKING:
    from ..model import InstantStyle


@dataclass
class Job:
    """One stylize request, resolved: what the task's denoising step needs."""

    model: InstantStyle
    prep: Prepared
    inputs: Inputs
    controlnets: list  # loaded ControlNetModels, in --control order
    run_kwargs: dict = field(
        default_factory=dict
    )  # for InstantStyle.run: on_step, scale_maps, pipeline kwargs

    @property
    def control_image(self):
        """The control image(s) as the ControlNet pipelines take them: one, or a list."""
        images = self.inputs.control
        return images[0] if len(images) == 1 else images

    def run(self, pipe, **pipe_kwargs) -> list[Image.Image]:
        """The denoising loop on ``pipe`` with this job's scales and kwargs."""
        return self.model.run(pipe, self.prep, **self.run_kwargs, **pipe_kwargs)


def stylize(
    model: InstantStyle,
    req: GenerateRequest,
    denoise: Callable[[Job], list],
    *,
    style_images=None,
    on_step=None,
    content_image=None,
    mask_image=None,
    style_mask_images=None,
    control_images=None,
    composition_image=None,
    negative_style_image=None,
) -> list[Image.Image]:
    """Run ``req`` on ``model`` with the task's ``denoise``; in-memory images override the request's paths."""
    # 1. Images and sizes (every input checked before any model runs).
    inputs = load_inputs(
        model,
        req,
        content_image=content_image,
        mask_image=mask_image,
        style_masks=style_mask_images,
        control_images=control_images,
    )
    # 2. Style embeddings and block scales at the generation size (regional: one token set per image).
    update = {"width": inputs.width, "height": inputs.height}
    if inputs.style_masks:
        update.update(style_combine="concat", style_weights=None)
    prep = model.prepare(
        req.model_copy(update=update),
        style_images,
        composition_image=composition_image,
        negative_style_image=negative_style_image,
    )
    prep.request = req.model_copy(update={"width": inputs.width, "height": inputs.height})
    prep.params.update(style_combine=req.style_combine, style_weights=req.style_weights)
    run_kwargs: dict = {"on_step": on_step, "scale_maps": [dict(s) for s in prep.scales]}
    if t5_regional.is_masked(req, inputs):
        run_kwargs["scale_maps"], run_kwargs["cross_attention_kwargs"] = t5_regional.masked_scales(
            req, prep, inputs
        )
    # 3. ControlNets, and the parameters of the stylize request.
    specs = [control_mod.parse_control(c, base=model.ids["base"]) for c in req.control]
    controlnets = [control_mod.load_controlnet(model, s.model) for s in specs]
    scales = list(req.control_scale) or [s.default_scale for s in specs]
    scales = scales * len(specs) if len(scales) == 1 else scales
    if controlnets:
        run_kwargs["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
    prep.params.update(
        {
            "task": req.task,
            "width": inputs.width,
            "height": inputs.height,
            "output_size": list(inputs.out_size),
            "strength": req.effective_strength,
            "controlnets": [
                {"kind": s.kind, "model": s.model, "scale": sc} for s, sc in zip(specs, scales, strict=True)
            ],
            **inputs.hashes,
        }
    )
    # 4. The task's own denoising.
    images = denoise(Job(model, prep, inputs, controlnets, run_kwargs))
    # 5. Back to the content image's exact aspect ratio.
    if inputs.out_size == (inputs.width, inputs.height):
        return images
    resized = []
    for im in images:
        out = im.resize(inputs.out_size, Image.LANCZOS)
        out.info.update(im.info)
        resized.append(out)
    return resized
