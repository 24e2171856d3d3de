"""InstantStyle (arXiv 2404.02733, Sec. 3.2-3.3): IP-Adapter features injected into the style
block(s) only, optionally with the reference's content subtracted in CLIP space.

Defaults, from the authors' ``infer_style.py`` (instantX-research/InstantStyle, read for
behaviour only; no licence): ``target_blocks=["up_blocks.0.attentions.1"]`` (``--mode style``;
``style+layout`` adds ``down_blocks.2.attentions.1``), IP scale 1.0, guidance 5, 30 steps,
``ip-adapter_sdxl`` with the ViT-bigG encoder, subtraction of the pooled text_encoder_2
embedding of ``content_prompt`` at ``neg_content_scale`` 0.5 (the examples' value) before the
projection. Differences: the sampler is the base's (SDXL: Euler), as the script's pipeline.

The core lives in ``instantstyle.pipeline`` (and ``pipelines.stylize`` for content images); this
module registers it under the common contract.
"""

from __future__ import annotations


def run(model, req, *, style_images=None, on_step=None):
    # ``generate`` handles method "instantstyle" itself (text-to-image and every stylize task).
    return model.generate(req, style_images=style_images, on_step=on_step)
