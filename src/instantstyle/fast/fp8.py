"""Row-wise scaled float8 linears that trace into the one compiled UNet graph (approximation).

``y = x W^T + b`` with ``x ~ x8 * sx`` (one scale per token row, ``sx = amax_row(|x|) / 448``)
and ``W ~ W8 * sw`` (one scale per output channel), multiplied by ``torch._scaled_mm`` with
row-wise scales: the error of one outlier stays in its row, unlike the per-tensor scales of
``Float8Linear`` (below). The forward is plain tensor code with no Python state, so under
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

import contextlib
import functools
import weakref

import torch

from .compiling import transformer_blocks

FP8 = torch.float8_e4m3fn  # e4m3fn: no inf; values past 448 would be NaN, hence the clamps
FP8_MAX = 448.0


@functools.cache
def output_dtype(device_type: str, device_index: int | None, dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if ``_scaled_mm`` takes it with row-wise scales on this device, else bfloat16."""
    device = (
        torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    )
    a = torch.ones(16, 32, device=device).to(FP8)
    try:
        torch._scaled_mm(
            a,
            a.t(),
            scale_a=torch.ones(16, 1, device=device),
            scale_b=torch.ones(1, 16, device=device),
            out_dtype=dtype,
        )
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
        y = torch._scaled_mm(x8, self.w8.t(), scale_a=sx, scale_b=self.sw, out_dtype=self.out_dtype).to(
            x.dtype
        )
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


class Float8Linear(torch.nn.Module):
    """``y = x W^T + b`` with x and W in float8 e4m3, per-tensor scales (approximation).

    Weight quantised once (``W ~ W8 * sw``); activations quantised per call (``x ~ x8 * sx``,
    ``sx = amax(|x|) / 448``). On CUDA the product runs in ``torch._scaled_mm``; elsewhere a
    dequantised reference matmul gives the same numbers (used by the CPU tests).
    """

    FP8_MAX = 448.0

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        with torch.no_grad():
            w = linear.weight.detach().float()  # [out, in]
            sw = w.abs().amax().clamp(min=1e-12) / self.FP8_MAX
            w8 = (
                (w / sw).clamp(-self.FP8_MAX, self.FP8_MAX).to(torch.float8_e4m3fn)
            )  # e4m3fn: no inf, NaN past 448
            self.register_buffer("w8", w8, persistent=False)
            self.register_buffer("sw", sw.reshape(()), persistent=False)
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.source = (linear.weight.data_ptr(), linear.weight._version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # [M, in]
        sx = (x2.abs().amax().float().clamp(min=1e-12) / self.FP8_MAX).reshape(())
        x8 = (x2.float() / sx).clamp(-self.FP8_MAX, self.FP8_MAX).to(torch.float8_e4m3fn)
        if x.is_cuda:
            y = torch._scaled_mm(x8, self.w8.t(), scale_a=sx, scale_b=self.sw, out_dtype=x.dtype)
        else:
            y = ((x8.float() * sx) @ (self.w8.float() * self.sw).t()).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def fp8_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


_FP8: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Linear -> Float8Linear


@contextlib.contextmanager
def fp8_linears(unet, scaling: str = "tensor"):
    """Swap the transformer blocks' big linears for cached float8 twins (``Float8Linear``, or
    ``fast.fp8.RowwiseFloat8Linear`` for ``scaling="row"``)."""
    kind = RowwiseFloat8Linear if scaling == "row" else Float8Linear
    swaps = []  # (parent, child name, original)
    for block in transformer_blocks(unet):
        skip = {
            id(m)
            for attn in (block.attn1, getattr(block, "attn2", None))
            if attn is not None and isinstance(attn._modules.get("processor"), torch.nn.Module)
            for m in attn._modules["processor"].modules()
        }  # IP weights act on 4 tokens: keep them
        for parent in block.modules():
            if id(parent) in skip:
                continue
            for child_name, child in list(parent._modules.items()):
                if (
                    not isinstance(child, torch.nn.Linear)
                    or child.in_features % 16
                    or child.out_features % 16
                ):
                    continue
                if child_name in ("to_k", "to_v") and getattr(parent, "is_cross_attention", False):
                    continue  # 77 text tokens: not worth it, and not a multiple of 16
                twin = _FP8.get(child)
                if type(twin) is not kind or twin.source != (child.weight.data_ptr(), child.weight._version):
                    twin = _FP8[child] = kind(child)
                swaps.append((parent, child_name, child, twin))
    try:
        for parent, name, _, twin in swaps:
            parent._modules[name] = twin
        yield
    finally:
        for parent, name, original, _ in swaps:
            parent._modules[name] = original
