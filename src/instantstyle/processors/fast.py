"""The fast path's attention processor: text attention plus only the active IP-Adapter branches.

``FastAttention`` mirrors diffusers 0.42 ``AttnProcessor2_0`` / ``IPAdapterAttnProcessor2_0``
(no masks on the image branch) step by step; which layers get one, with which weights, is the
fast path's plan (its ``plan_processors``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import frame

if TYPE_CHECKING:
    from ..fast.context import ContextSlot


class FastAttention:
    """Attention processor for one ``Attention`` module during a fast call.

    ``ip`` holds ``(adapter index, to_k_ip, to_v_ip, scale tensor)`` for the adapters that are
    active on this layer; empty means plain text cross-attention (the image tokens are not
    touched). ``qkv``/``kv`` are optional fused weights. ``ctx`` (a ``fast.context.ContextSlot``)
    holds this layer's text and image-token keys/values, computed once per call outside the graph.
    """

    def __init__(
        self,
        ip: tuple = (),
        qkv: torch.Tensor | None = None,
        kv: torch.Tensor | None = None,
        ctx: ContextSlot | None = None,
    ):
        self.ip = ip
        self.qkv = qkv
        self.kv = kv
        self.ctx = ctx

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        ip_tokens = None
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states, ip_tokens = encoder_hidden_states
        hidden_states, residual, shape = frame.enter(attn, hidden_states, temb)
        batch, seq = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        if self.qkv is not None and encoder_hidden_states is None:  # fused self-attention
            q, k, v = F.linear(hidden_states, self.qkv).chunk(3, dim=-1)
        elif self.ctx is not None and encoder_hidden_states is not None:  # step-invariant K/V, made once
            q = attn.to_q(hidden_states)
            k, v = self.ctx.text_kv(encoder_hidden_states)
        else:
            q = attn.to_q(hidden_states)
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            if encoder_hidden_states is not None and attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            if self.kv is not None:
                k, v = F.linear(context, self.kv).chunk(2, dim=-1)
            else:
                k, v = attn.to_k(context), attn.to_v(context)
        out = frame.attend(attn, q, k, v, attention_mask)  # [B, N, C]

        for index, to_k_ip, to_v_ip, scale in self.ip:  # active adapters only
            tokens = ip_tokens[index]  # [B, n_img, T, D]
            if self.ctx is not None:
                k_ip, v_ip = self.ctx.ip_kv(index, tokens)
            else:
                k_ip, v_ip = to_k_ip(tokens), to_v_ip(tokens)
            out = out + scale * frame.attend(attn, q, k_ip, v_ip)
        return frame.leave(attn, out, residual, shape)
