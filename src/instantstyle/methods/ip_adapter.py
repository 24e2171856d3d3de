"""Plain IP-Adapter (arXiv 2308.06721, Sec. 3.2, decoupled cross-attention): the reference's image
features enter every cross-attention layer at one scale -- InstantStyle's ``full`` preset, with no
content subtraction. This is the "original IP-Adapter" InstantStyle's report compares against.
"""

from __future__ import annotations


def run(model, req, *, style_images=None, on_step=None):
    # The request validator refuses --blocks / --content-prompt / other modes for this method.
    prep = model.prepare(req.model_copy(update={"mode": "full"}), style_images)
    return model.run(model.pipe, prep, on_step=on_step)
