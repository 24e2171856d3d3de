"""Regional styles (any task): several style images, each confined to its region of the picture.

Each reference keeps its own token set (``style_combine="concat"``), and each set is masked to
its region through diffusers' IP-Adapter attention masks (``cross_attention_kwargs
["ip_adapter_masks"]``), with per-image scales on the style block only. Inpainting's
``inpaint_style="mask"`` is the same mechanism with the inpainting mask for every image: the style
is injected only where the image is repainted. Masks are read and checked in ``inputs.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from PIL import Image

from ..errors import InstantStyleError

if TYPE_CHECKING:
    from ..config import GenerateRequest
    from .inputs import Inputs
    from .prepare import Prepared


def is_masked(req: GenerateRequest, inputs: Inputs) -> bool:
    """Whether the style images of ``req`` are masked: regional styles, or inpainting's mask style."""
    return bool(inputs.style_masks) or (req.task == "inpaint" and req.inpaint_style == "mask")


def masked_scales(req: GenerateRequest, prep: Prepared, inputs: Inputs) -> tuple[list[dict], dict]:
    """Per-image scale maps (one per slot) and the ``cross_attention_kwargs`` that mask each image.

    Slots carrying the style images (``injection.py``) take the masks and per-image weights; a
    composition image is one unmasked image.
    """
    n_images = prep.ip_embeds[0].shape[1]
    if inputs.style_masks:
        if len(inputs.style_masks) != n_images:
            raise InstantStyleError(
                f"{len(inputs.style_masks)} style masks for {n_images} style images (a saved style counts each of "
                "its images); give one --style-mask per style image"
            )
        weights = req.style_weights or [1.0] * n_images
        masks = ip_masks(inputs.style_masks, inputs.width, inputs.height)
    else:  # inpainting, the style injected only where the image is repainted
        weights = [1.0] * n_images
        masks = ip_masks([inputs.mask] * n_images, inputs.width, inputs.height)
    styled = [kind != "composition" for kind in prep.slots]
    scale_maps = [
        {name: [s * w for w in weights] for name, s in m.items()} if keep else dict(m)
        for m, keep in zip(prep.scales, styled, strict=True)
    ]
    return scale_maps, {"ip_adapter_masks": [masks if keep else None for keep in styled]}


def ip_masks(masks: list[Image.Image], width: int, height: int) -> torch.Tensor:
    """Masks -> ``[1, N, H, W]`` in [0, 1] as diffusers' IP-Adapter attention expects."""
    from diffusers.image_processor import IPAdapterMaskProcessor

    m = IPAdapterMaskProcessor().preprocess(masks, height=height, width=width)  # [N, 1, H, W]
    return m.reshape(1, m.shape[0], m.shape[2], m.shape[3])
