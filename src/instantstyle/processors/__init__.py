"""Every attention processor of the toolkit, and the one scoped swap that installs them.

- ``frame``: what every processor shares with diffusers' ``AttnProcessor2_0`` (norms, reshapes,
  heads, output projection, residual), once.
- ``maths``: pure tensor maths of the attention-sharing baselines (AdaIN, shared and swapped
  self-attention), shapes in the docstrings.
- ``fast``: ``FastAttention``, the fast path's text + active-IP-branches processor.
- ``self_attention``: ``SelfAttentionPatch``, a self-attention processor with pluggable maths
  (StyleAligned, Visual Style Prompting).
- ``text_only``: ``TextOnlyProcessor``, cross-attention without an image branch (adapter training).
- ``scoped``: ``scoped_processors`` (and ``scoped_forward`` / ``wrapped_forward`` for module forwards),
  patches restored in ``finally``.

Imports nothing itself; import the submodule you need.
"""
