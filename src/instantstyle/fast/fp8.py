"""Row-wise scaled float8 linears that trace into the one compiled UNet graph (approximation).

``y = x W^T + b`` with ``x ~ x8 * sx`` (one scale per token row, ``sx = amax_row(|x|) / 448``)
and ``W ~ W8 * sw`` (one scale per output channel), multiplied by ``torch._scaled_mm`` with
row-wise scales: the error of one outlier stays in its row, unlike the per-tensor scales of
``fastpath.Float8Linear``. The forward is plain tensor code with no Python state, so under
``--speed fp8-max`` the quantisation (an amax reduction and a cast) fuses into the graph's
generated kernels and the whole thing is replayed by the UNet's CUDA graph; the per-tensor
version ran outside any graph, with separate quantisation ops, and was slower than fp16
(docs/performance.md, 2026-11-26).

What the CPU tests can and cannot show: torch's CPU ``_scaled_mm`` takes float8 e4m3 with
row-wise scales, so the maths, the path and the bound on the tiny model are tested; the speed,
whether cuBLASLt takes fp16 output with row-wise scales on a given build (else bf16 then a cast,
checked once per device by ``output_dtype``) and the error on real weights (activation outliers)
need a GPU and real SDXL weights.
"""

from __future__ import annotations

import functools

import torch

FP8 = torch.float8_e4m3fn  # e4m3fn: no inf; values past 448 would be NaN, hence the clamps
FP8_MAX = 448.0


@functools.cache
def output_dtype(device_type: str, device_index: int | None, dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if ``_scaled_mm`` takes it with row-wise scales on this device, else bfloat16."""
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    a = torch.ones(16, 32, device=device).to(FP8)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1, device=device), scale_b=torch.ones(1, 16, device=device),
                         out_dtype=dtype)
        return dtype
    except (RuntimeError, NotImplementedError):
        return torch.bfloat16


class RowwiseFloat8Linear(torch.nn.Module):
    """A float8 twin of an ``nn.Linear`` (weights quantised once, per output channel)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        with torch.inference_mode(False), torch.no_grad():
            w = linear.weight.detach().float()  # [out, in]
            sw = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX  # [out, 1]
            w8 = (w / sw).clamp(-FP8_MAX, FP8_MAX).to(FP8)
            self.register_buffer("w8", w8, persistent=False)
            self.register_buffer("sw", sw.reshape(1, -1).contiguous(), persistent=False)  # [1, out]
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.source = (linear.weight.data_ptr(), linear.weight._version)
        dev = linear.weight.device
        self.out_dtype = output_dtype(dev.type, dev.index, linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # [M, in]
        sx = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX  # [M, 1]
        x8 = (x2.float() / sx).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        y = torch._scaled_mm(x8, self.w8.t(), scale_a=sx, scale_b=self.sw, out_dtype=self.out_dtype).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)
