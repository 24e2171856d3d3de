"""InstantStyle (arXiv 2404.02733, Sec. 3.2-3.3): IP-Adapter features injected into the style
block(s) only, optionally with the reference's content subtracted in CLIP space.

The core lives in ``instantstyle.pipeline`` (and ``pipelines.stylize`` for content images); this
module registers it under the common contract.
"""

from __future__ import annotations


def run(model, req, *, style_images=None, on_step=None):
    # ``generate`` handles method "instantstyle" itself (text-to-image and every stylize task).
    return model.generate(req, style_images=style_images, on_step=on_step)
