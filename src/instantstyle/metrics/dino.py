"""Content leakage (``dino_leakage``): DINOv2 cosine between an output image and the style reference.

DINOv2, Oquab et al., arXiv 2304.07193 (weights ``facebook/dinov2-base``, Apache-2.0). Self-
supervised ViT features capture what is depicted and where, far more than style, so a high cosine
between an output and the *style* reference means the reference's content leaked into the output
(lower is better). It is the cosine of class tokens, as DreamBooth's DINO score (arXiv 2208.12242,
Sec. 4.1, there DINO ViT-S/16 measuring subject fidelity, here read the other way).

The embedding is the model's pooled output (the final layer-normed class token). Preprocessing is
the model card's: bicubic resize of the short side to 256, centre crop 224, ImageNet mean and std.
"""

from __future__ import annotations

import torch

from .. import models
from .loading import from_pretrained_strict

DEFAULT_DINO = "facebook/dinov2-base"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_processor(crop: int = 224):
    """DINOv2's preprocessing, the PIL implementation (embeddings never depend on torchvision)."""
    try:
        from transformers import BitImageProcessorPil as Processor
    except ImportError:  # transformers < 5
        from transformers import BitImageProcessor as Processor
    return Processor(
        size={"shortest_edge": crop * 256 // 224},
        crop_size={"height": crop, "width": crop},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        resample=3,
    )


def load(spec: str = DEFAULT_DINO, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """``(Dinov2Model, image processor)`` from a local dir, a Hub id or ``tiny``."""
    from transformers import Dinov2Model

    if spec == models.TINY:
        from ..sources.tiny_metrics import tiny_metric_paths

        spec = str(tiny_metric_paths()["dino"])
    model = from_pretrained_strict(Dinov2Model, spec, "DINOv2 model", dtype=dtype).to(device)
    return model, image_processor()  # 224 px, as the model card (position embeddings are interpolated)


@torch.no_grad()
def embed(model, processor, images) -> torch.Tensor:
    """Pooled class-token features ``[N, W]`` (float32, CPU)."""
    param = next(model.parameters())
    pixels = processor(images=list(images), return_tensors="pt").pixel_values.to(param.device, param.dtype)
    return model(pixel_values=pixels).pooler_output.float().cpu()
