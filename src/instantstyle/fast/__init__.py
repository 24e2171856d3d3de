"""Speed pieces added to the fast path one module each (``instantstyle.fastpath`` switches them).

Exact pieces (the same image within floating-point rounding):

- ``context``: the step-invariant keys/values of every cross-attention layer (text tokens and
  IP-Adapter image tokens) computed once per call instead of at every step.
- ``vae``: the VAE decode by the fast path in bf16 (float32's range; stock SDXL upcasts the whole
  VAE to float32 at every call and back), channels-last, optionally compiled, from a persistent
  twin of the decoder: no per-call dtype round trip of the VAE's weights.
- ``compiling``: Inductor options baked in at trace time (coordinate-descent tuning, autotuned
  kernels), the compiled-artefact cache key, and the on-disk cache directory.

Approximations (opt-in, never a default; each reports its difference in the benchmark):

- ``fp8``: row-wise scaled float8 linears, written so that they trace into the one compiled
  UNet graph (and so into its CUDA graph).
- ``cfg``: CFG truncation, the unconditional half dropped for the last part of the schedule.
- ``deepcache``: DeepCache-style reuse of the deep UNet features on the steps between full ones.
"""
