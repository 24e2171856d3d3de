"""Pure tensor maths of the attention-sharing baselines (no modules, no pipelines).

Batch convention: the UNet sees ``[G * B, ...]`` where ``G`` is the number of classifier-free
guidance halves (2 with CFG: unconditional then conditional, 1 without) and ``B`` the images of
one half, the reference first (row 0 of each half), then the targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-5


def reference_rows(x: torch.Tensor, group: int) -> torch.Tensor:
    """Each row replaced by the reference row (row 0) of its half.

    ``x``: ``[G * B, ...]`` with ``B = group`` -> ``[G * B, ...]``.
    """
    shape = x.shape
    x = x.reshape(-1, group, *shape[1:])  # [G, B, ...]
    return x[:, :1].expand_as(x).reshape(shape)


def adain(x: torch.Tensor, ref: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """AdaIN over the token axis: ``x``'s per-channel mean/std replaced by ``ref``'s.

    ``x``, ``ref``: ``[..., L, D]`` (broadcastable); statistics over ``L`` (dim -2) per channel ``D``.
    std is ``sqrt(var + eps)`` with the unbiased variance, as StyleAligned's ``calc_mean_std``.
    """
    mu, sigma = x.mean(-2, keepdim=True), (x.var(-2, keepdim=True) + eps).sqrt()  # [..., 1, D]
    mu_r, sigma_r = ref.mean(-2, keepdim=True), (ref.var(-2, keepdim=True) + eps).sqrt()
    return (x - mu) / sigma * sigma_r + mu_r


def adain_channels(x: torch.Tensor, ref: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """AdaIN of image latents per channel over the spatial axes (VSP's colour calibration of x0).

    ``x``: ``[N, C, H, W]``, ``ref``: ``[1 or N, C, H', W']`` -> ``[N, C, H, W]``.
    """
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1).transpose(1, 2)  # [N, HW, C]
    ref_flat = ref.reshape(ref.shape[0], c, -1).transpose(1, 2)  # [1|N, H'W', C]
    return adain(flat, ref_flat, eps).transpose(1, 2).reshape(x.shape)


def shared_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: int,
    *,
    adain_queries: bool = True,
    adain_keys: bool = True,
    score_shift: float = 0.0,
) -> torch.Tensor:
    """StyleAligned's shared self-attention (arXiv 2312.02133, Sec. 3, Eq. 3-4).

    ``q, k, v``: ``[G * B, H, L, Dh]`` -> ``[G * B, H, L, Dh]``. Each image's queries and keys are
    AdaIN-normalised to the reference's (per head and channel, over tokens); the reference's keys
    and values are appended to every image's own, so each query attends over ``2 L`` tokens.
    ``score_shift`` is added to the logits of the reference tokens. The reference row itself is
    unchanged (AdaIN to itself is the identity, duplicated keys/values leave softmax unchanged).
    """
    q_ref, k_ref, v_ref = (reference_rows(t, group) for t in (q, k, v))
    if adain_queries:
        q = adain(q, q_ref)
    if adain_keys:
        k = adain(k, k_ref)
    k_all = torch.cat([k, k_ref], dim=-2)  # [GB, H, 2L, Dh]
    v_all = torch.cat([v, v_ref], dim=-2)
    mask = None
    if score_shift:
        length = k.shape[-2]
        mask = torch.zeros(1, k_all.shape[-2], dtype=q.dtype, device=q.device)  # [1, 2L]
        mask[:, length:] = score_shift  # broadcast over batch, heads and queries
    return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)


def swapped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: int) -> torch.Tensor:
    """Visual Style Prompting's swapping self-attention (arXiv 2402.12974, Sec. 4, Eq. 4).

    ``q, k, v``: ``[G * B, H, L, Dh]`` -> ``[G * B, H, L, Dh]``: every image keeps its queries and
    attends to the reference's keys and values instead of its own (replaced, not concatenated).
    """
    return F.scaled_dot_product_attention(q, reference_rows(k, group), reference_rows(v, group))
