"""Conditioning dropout of adapter training (IP-Adapter, arXiv 2308.06721): pure tensor maths.

5% of samples drop the caption, 5% the image and 5% both (the defaults of ``TrainConfig``), so
classifier-free guidance works at inference.
"""

from __future__ import annotations

import torch


def dropout_masks(
    u: torch.Tensor, p_text: float, p_image: float, p_both: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning dropout from uniform draws ``u [B]`` in [0, 1).

    ``[0, p_text)`` drops the caption only, the next ``p_image`` the image only, the next ``p_both``
    both. Returns boolean ``(drop_text [B], drop_image [B])``.
    """
    text_only = u < p_text
    image_only = (u >= p_text) & (u < p_text + p_image)
    both = (u >= p_text + p_image) & (u < p_text + p_image + p_both)
    return text_only | both, image_only | both


def apply_dropout(
    prompt_embeds: torch.Tensor,  # [B, L, C]
    pooled: torch.Tensor,  # [B, P]
    image_embeds: torch.Tensor,  # [B, D]
    empty_prompt: torch.Tensor,  # [L, C]  embeddings of the empty caption ""
    empty_pooled: torch.Tensor,  # [P]
    drop_text: torch.Tensor,  # [B] bool
    drop_image: torch.Tensor,  # [B] bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dropped captions become the empty caption's embeddings; dropped images become zeros
    (what diffusers feeds the unconditional branch of a global-embedding adapter)."""
    t = drop_text.to(prompt_embeds.device)
    i = drop_image.to(image_embeds.device)
    prompt_embeds = torch.where(t[:, None, None], empty_prompt.to(prompt_embeds)[None], prompt_embeds)
    pooled = torch.where(t[:, None], empty_pooled.to(pooled)[None], pooled)
    image_embeds = torch.where(i[:, None], torch.zeros_like(image_embeds), image_embeds)
    return prompt_embeds, pooled, image_embeds
