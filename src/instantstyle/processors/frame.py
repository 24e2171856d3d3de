"""The frame every custom attention processor shares with diffusers' ``AttnProcessor2_0`` (0.42).

Our processors (the fast path's, the baselines' self-attention patches) change only what happens
between ``enter`` and ``leave``: the q/k/v maths. Everything around it -- spatial norm, the 4-D
to token reshape, group norm, the split into heads with the q/k norms, the merge back, output
projection, residual, rescale -- is diffusers' and lives here once, so it cannot drift between
copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def enter(attn, hidden_states: torch.Tensor, temb: torch.Tensor | None = None):
    """``(tokens [B, N, C], residual, spatial shape or None)`` as ``AttnProcessor2_0`` prepares them."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = None
    if hidden_states.ndim == 4:
        shape = hidden_states.shape  # [B, C, H, W]
        batch, channel, height, width = shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)  # [B, HW, C]
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, residual, shape


def split_heads(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q ``[B, N, C]``, k/v ``[B, M, C]`` -> ``[B, h, N, d]``, ``[B, h, M, d]`` x 2, q/k normed if the layer norms them."""
    batch = q.shape[0]
    head_dim = k.shape[-1] // attn.heads
    q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (q, k, v))  # [B, h, L, d]
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v


def merge_heads(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, h, N, d]`` -> ``[B, N, h * d]`` in ``dtype`` (the queries')."""
    batch, heads, _, head_dim = out.shape
    return out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(dtype)


def attend(
    attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """SDPA over heads: q ``[B, N, C]``, k/v ``[B, M, C]`` -> ``[B, N, C]`` (as ``AttnProcessor2_0``)."""
    q, k, v = split_heads(attn, q, k, v)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return merge_heads(out, q.dtype)


def leave(attn, out: torch.Tensor, residual: torch.Tensor, shape) -> torch.Tensor:
    """Output projection, back to ``[B, C, H, W]`` if the input was 4-D, residual, rescale."""
    out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
    if shape is not None:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor
