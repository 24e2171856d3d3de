"""A self-attention processor whose attention maths is pluggable (for StyleAligned and VSP).

It follows diffusers 0.42's ``AttnProcessor2_0`` step for step for a self-attention (``attn1``)
layer of SDXL, and replaces only the ``scaled_dot_product_attention`` call by ``fn(q, k, v, group)``
(``maths.shared_attention``, ``maths.swapped_attention``) while ``state.active``; inactive, it is
``AttnProcessor2_0`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import frame


@dataclass
class PatchState:
    """Shared by every patched layer of one call."""

    group: int  # images per CFG half, reference first
    active: bool = True  # whether the current step uses the patched maths
    calls: int = 0  # patched-layer evaluations so far (for tests and cost accounting)


class SelfAttentionPatch:
    def __init__(
        self, fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor], state: PatchState
    ):
        self.fn = fn
        self.state = state

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("SelfAttentionPatch is for self-attention layers (attn1) without masks")
        hidden_states, residual, shape = frame.enter(attn, hidden_states, temb)
        batch = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)  # [N, L, C]
        q, k, v = frame.split_heads(attn, q, k, v)  # [N, H, L, Dh]
        if batch % self.state.group:
            raise RuntimeError(
                f"batch of {batch} rows is not a multiple of the group size {self.state.group}"
            )
        if self.state.active:
            self.state.calls += 1
            out = self.fn(q, k, v, self.state.group)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return frame.leave(attn, frame.merge_heads(out, q.dtype), residual, shape)  # merged: [N, L, C]
