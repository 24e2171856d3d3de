"""InstantStyle (arXiv 2404.02733, Sec. 3.2-3.3): IP-Adapter features injected into the style
block(s) only, optionally with the reference's content subtracted in CLIP space.

The core lives in ``instantstyle.pipeline``; this module registers it under the common contract.
"""

from __future__ import annotations


def run(model, req, *, style_images=None, on_step=None):
    prep = model.prepare(req, style_images)
    return model.run(model.pipe, prep, on_step=on_step)
