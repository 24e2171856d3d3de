"""The fast path: scoped speed-ups around one denoising call, each switchable on its own.

Everything here is a patch applied by ``scope(pipe, options)`` (``fast.call``) for the duration of
one pipeline call and undone in ``finally`` (processors back to the identical objects, ``encoder_hid_proj``
back, compiled wrappers detached, memory format restored). Outside the scope the pipeline is
stock diffusers again, which is what lets the benchmark time both in one process.

Pieces (``FastOptions`` fields), all exact up to floating-point rounding unless marked:

- ``light_inactive``: every cross-attention whose IP scale is 0 gets ``FastAttention`` with
  no image branch at all (plain text attention); active ones get the same class with their
  ``to_k_ip``/``to_v_ip`` weights and the scale held as a 0-d *tensor*, so a compiled graph does
  not bake the scale in and a scale change does not recompile.
- ``project_once``: diffusers runs ``unet.encoder_hid_proj`` (the IP image projection) at every
  UNet call; ``ProjectOnce`` computes it on the first step and returns the same tokens for the
  same input tensors afterwards.
- ``compile``: ``torch.compile``, kept across calls. ``compile_scope="blocks"``: the repeated
  ``BasicTransformerBlock`` modules only (regional compilation: one graph per distinct block
  shape, shared by all instances; seconds to compile). ``compile_scope="unet"``: the whole UNet
  forward as one graph (inductor fuses the resnets' norms and activations too; a minute to
  compile). There every IP layer keeps its image branch with its scale as a tensor, 0 where the
  preset makes it inactive, so a preset change is a change of tensor values, not of the graph.
- ``cuda_graphs``: the UNet forward replayed as one CUDA graph per input signature
  (``fast.unet_graphs``, ``fast.graphs``); exact, CUDA only, not under offloading. IP layers
  are uniform as above, so one graph serves every preset and scale.
- ``compile_vae``: ``torch.compile`` of the VAE decoder (the 1024 px decode in float32 is a
  sizeable part of an image's time).
- ``fuse_qkv``: self-attention q/k/v and cross-attention k/v as one matmul (cached weights).
- ``channels_last``: the UNet's convolution weights in NHWC for the call.
- ``attention``: pin the SDPA kernel (``flash``, ``efficient``, ``cudnn``, ``math``).
- ``fp8`` (*approximation*, opt-in, CUDA compute capability >= 8.9): the transformer blocks'
  linears as float8 e4m3 matmuls (``torch._scaled_mm``); ``fp8_scaling="tensor"`` (per-tensor
  scales, ``fast.fp8.Float8Linear``) or ``"row"`` (row-wise, ``fast.fp8.RowwiseFloat8Linear``:
  traces into the compiled graph).

More pieces (one module each):

- ``context_kv`` (``fast.context``): the text and image-token keys/values of every
  cross-attention layer once per call, not at every step.
- ``prune_ip``: on the graph paths (whole-UNet compile, CUDA graphs) inactive IP layers get no
  image branch either, as with ``light_inactive`` eagerly: one graph per preset (a new preset
  captures, or compiles, once; style image, prompt and scale stay data).
- ``vae_decode`` (``fast.vae``): ``stock`` | ``auto`` | ``bf16`` | ``fp16`` | ``fp32``: decode by
  the fast path from a persistent decoder twin (``auto``: bf16 where stock upcasts to float32),
  channels-last, compiled when ``compile_vae``.
- ``inductor_tuning`` (``fast.compiling``): coordinate-descent tuning in every compile and
  ``cudnn.benchmark`` for the call.
- ``cfg_truncation`` (*approximation*, ``fast.cfg``): the last fraction of the steps without the
  unconditional half.
- ``deepcache_interval`` (*approximation*, ``fast.deepcache``): the deep UNet blocks run on every
  n-th step only; the steps between reuse their features.

Modules: ``options`` (``FastOptions``, the ``--speed`` names; no torch), ``call`` (``scope``: the
call's patches, and ``effective``), ``plan`` (which processors, fused weights), ``project``
(``ProjectOnce``), ``compiling`` (regional / whole-UNet / VAE compiles, Inductor settings),
``unet_graphs`` (the UNet as CUDA graphs, with ``fast.graphs``), ``fp8``, ``context``,
``vae``, ``cfg``, ``deepcache``. The processor itself is ``processors.fast.FastAttention``.
The memory modes (offload, tiling) are ``instantstyle.memory``, a load-time choice.

The names below are importable from ``instantstyle.fast`` itself (loaded on first use).
"""

from __future__ import annotations

_EXPORTS = {
    **{
        name: "options"
        for name in (
            "FastOptions",
            "options_for",
            "check",
            "SPEEDS",
            "APPROXIMATE_SPEEDS",
            "ATTENTION_BACKENDS",
            "PLAIN",
            "EXACT",
            "FAST",
            "MAX",
            "GRAPHS",
            "MAX_TUNED",
            "MAX_AUTOTUNE",
            "FP8_MAX",
        )
    },
    "scope": "call",
    "effective": "call",
    "uniform_ip": "plan",
    "release_caches": "call",
    "fast_decoder": "vae",
    "decode_latents": "vae",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'instantstyle.fast' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
