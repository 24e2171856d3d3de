"""Plain IP-Adapter (arXiv 2308.06721, Sec. 3.2, decoupled cross-attention): the reference's image
features enter every cross-attention layer at one scale -- InstantStyle's ``full`` preset, with no
content subtraction. This is the "original IP-Adapter" InstantStyle's report compares against.

Defaults, from tencent-ailab/IP-Adapter (Apache-2.0) and its SDXL demo: ``ip-adapter_sdxl`` with
the ViT-bigG encoder, scale 1.0 in every cross-attention layer, the request's sampling settings
(guidance 5, 30 steps by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import GenerateRequest
    from ..model import InstantStyle


def run(
    model: InstantStyle, req: GenerateRequest, *, style_images=None, on_step=None, negative_style_image=None
) -> list:
    # The request validator refuses --blocks / --content-prompt / other modes for this method.
    prep = model.prepare(
        req.model_copy(update={"mode": "full"}), style_images, negative_style_image=negative_style_image
    )
    return model.run(model.pipe, prep, on_step=on_step)
