"""Text alignment (``clip_t``): CLIP cosine between an output image and its prompt.

CLIP, Radford et al., arXiv 2103.00020; as a text-image metric, CLIPScore (Hessel et al., arXiv
2104.08718). The default model is ``openai/clip-vit-large-patch14`` (OpenAI's CLIP ViT-L/14, 224 px),
the default of torchmetrics' ``CLIPScore`` and the CLIP most style papers report text alignment
with (see docs/evaluation.md for which papers, and why their numbers still differ). The score
is the raw cosine of the projected image and text embeddings (USO-Bench reports InstantStyle-XL at
0.276 on this scale); ``maths.clip_score`` gives torchmetrics' ``100 * max(cos, 0)`` (Style-Rank
reports 22.78 on that one). Prompts longer than CLIP's 77 tokens are truncated, as everywhere.
"""

from __future__ import annotations

import torch

from .. import models
from .loading import from_pretrained_strict

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def load(spec: str = DEFAULT_CLIP, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """``(CLIPModel, tokenizer, image processor)`` from a local dir, a Hub id or ``tiny``."""
    from transformers import CLIPModel, CLIPTokenizer

    if spec == models.TINY:
        from ..sources.tiny_metrics import tiny_metric_paths

        spec = str(tiny_metric_paths()["clip"])
    model = from_pretrained_strict(CLIPModel, spec, "CLIP model", dtype=dtype).to(device)
    src = models.parse_source(spec)
    where, kw = (
        (str(src.local), {})
        if src.local is not None
        else (src.repo_id, {"subfolder": src.subpath} if src.subpath else {})
    )
    try:
        tokenizer = CLIPTokenizer.from_pretrained(where, **kw)
    except OSError:
        raise models.missing("CLIP tokenizer", src) from None
    return model, tokenizer, models.image_processor(model.config.vision_config.image_size)


@torch.no_grad()
def embed_images(model, processor, images) -> torch.Tensor:
    """Projected image embeddings ``[N, D]`` (float32, CPU)."""
    param = next(model.parameters())
    pixels = processor(images=list(images), return_tensors="pt").pixel_values.to(param.device, param.dtype)
    pooled = model.vision_model(pixel_values=pixels).pooler_output  # [N, W]
    return model.visual_projection(pooled).float().cpu()  # [N, D]


@torch.no_grad()
def embed_texts(model, tokenizer, texts) -> torch.Tensor:
    """Projected text embeddings ``[N, D]`` (float32, CPU), truncated to the tokenizer's length (77)."""
    param = next(model.parameters())
    ids = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids.to(param.device)
    pooled = model.text_model(input_ids=ids).pooler_output  # [N, W]: the end-of-text token
    return model.text_projection(pooled).float().cpu()  # [N, D]
