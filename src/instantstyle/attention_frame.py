"""The frame every custom attention processor shares with diffusers' ``AttnProcessor2_0`` (0.42).

Our processors (the fast path's, the baselines' self-attention patches) change only what happens
between ``enter`` and ``leave``: the q/k/v maths. Everything around it -- spatial norm, the 4-D
to token reshape, group norm, output projection, residual, rescale -- is diffusers' and lives here
once, so it cannot drift between copies.
"""

from __future__ import annotations

import torch


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


def leave(attn, out: torch.Tensor, residual: torch.Tensor, shape) -> torch.Tensor:
    """Output projection, back to ``[B, C, H, W]`` if the input was 4-D, residual, rescale."""
    out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
    if shape is not None:
        out = out.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor
