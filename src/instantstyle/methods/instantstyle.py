"""InstantStyle (arXiv 2404.02733, Sec. 3.2-3.3): IP-Adapter features injected into the style
block(s) only, optionally with the reference's content subtracted in CLIP space.

Defaults, from the authors' ``infer_style.py`` (instantX-research/InstantStyle, read for
behaviour only; no licence): ``target_blocks=["up_blocks.0.attentions.1"]`` (``--mode style``;
``style+layout`` adds ``down_blocks.2.attentions.1``), IP scale 1.0, guidance 5, 30 steps,
``ip-adapter_sdxl`` with the ViT-bigG encoder, subtraction of the pooled text_encoder_2
embedding of ``content_prompt`` at ``neg_content_scale`` 0.5 (the examples' value) before the
projection. Differences: the sampler is the base's (SDXL: Euler), as the script's pipeline.

The method runs the request's task (``instantstyle.pipelines.TASKS``: text-to-image, ControlNet,
img2img, inpainting, InstantStyle-Plus, each with regional styles).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import GenerateRequest
    from ..model import InstantStyle


def run(model: InstantStyle, req: GenerateRequest, *, style_images=None, on_step=None, **images) -> list:
    return model.run_task(req, style_images=style_images, on_step=on_step, **images)
