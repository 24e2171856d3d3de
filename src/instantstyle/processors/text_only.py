"""The cross-attention processor of a block that has no IP-Adapter weights (adapter training).

A UNet with an image projection hands every ``attn2`` a ``(text, image tokens)`` tuple; a plain
processor cannot read it. ``TextOnlyProcessor`` drops the image tokens and runs the block's own
processor: it has no parameters and adds nothing, so the block computes exactly its text-only
attention (``training.layers`` explains why untrained blocks get no image branch).
"""

from __future__ import annotations


class TextOnlyProcessor:
    """Drops the image tokens, runs the wrapped processor on the text tokens."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if isinstance(encoder_hidden_states, tuple):
            encoder_hidden_states = encoder_hidden_states[0]
        return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
