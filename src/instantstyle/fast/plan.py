"""Which attention processors a fast call installs, with fused weights and scales as tensors.

``plan_processors`` gives ``{processor name: processors.fast.FastAttention}`` for the layers the
options change; the processors and fused weights are made once per layer and structure and
reused by every call (stable objects keep compiled graphs' guards and captured CUDA graphs valid).
"""

from __future__ import annotations

import weakref

import torch

from ..processors.fast import FastAttention
from . import context as fast_context
from .options import FastOptions

_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Attention -> (source key, weight)
_STOCK_IP_PROCESSORS = ("IPAdapterAttnProcessor2_0", "IPAdapterAttnProcessor")


def _fused(attn, names: tuple[str, ...]) -> torch.Tensor | None:
    """``cat([to_q, to_k, to_v])`` (or k, v) weights, without a second copy in memory.

    The first time, the layers' weights are moved into one contiguous tensor and each layer's
    ``weight`` becomes a view of its rows: the values are unchanged (so the plain path and stock
    diffusers see the same numbers), and fusing costs no memory (a separate fused copy would be
    ~1.3 GB in fp16 on SDXL). None if the layers have biases or are not plain ``nn.Linear``.
    """
    layers = [getattr(attn, n) for n in names]
    if any(
        getattr(layer, "bias", None) is not None or not isinstance(layer, torch.nn.Linear) for layer in layers
    ):
        return None

    def key():
        return names, tuple((layer.weight.data_ptr(), layer.weight._version) for layer in layers)

    hit = _FUSED.get(attn)
    if hit is not None and hit[0] == key():
        return hit[1]
    # Outside inference mode (calls run inside it): an inference tensor would make these layers
    # untrainable for the rest of the process ("Inference tensors cannot be saved for backward").
    with torch.inference_mode(False), torch.no_grad():
        weight = torch.cat([layer.weight.detach() for layer in layers])
        start = 0
        for layer in layers:
            rows = layer.weight.shape[0]
            layer.weight.data = weight[start : start + rows]  # a view: shared storage, same values
            start += rows
    _FUSED[attn] = (key(), weight)
    return weight


def _ip_layers(proc, uniform: bool) -> list | None:
    """``[(index, to_k_ip, to_v_ip, scale)]`` for the adapters this layer runs: those with a
    non-zero scale, or every adapter when ``uniform`` (scale 0 then adds exactly nothing).

    None when a scale is a per-image list (masked multi-image use): that layer keeps diffusers'
    processor.
    """
    layers = []
    for i, scale in enumerate(proc.scale):
        if isinstance(scale, list):
            return None
        if scale == 0 and not uniform:
            continue  # inactive: no image branch at all
        layers.append((i, proc.to_k_ip[i], proc.to_v_ip[i], float(scale)))
    return layers


_PROCESSORS: weakref.WeakKeyDictionary = (
    weakref.WeakKeyDictionary()
)  # Attention -> {structure: FastAttention}


def _fast_processor(
    attn, layers=(), kv: torch.Tensor | None = None, qkv: torch.Tensor | None = None, ctx: bool = False
) -> FastAttention:
    """The layer's ``FastAttention`` for this structure, made once and reused by every call.

    Reuse keeps the objects (and so compiled graphs' guards and captured CUDA graphs) stable; the
    scales are 0-d tensors set in place, so a scale change is data, never structure. The cached
    processor holds its weights, so the ids in the key cannot be reused by other objects.
    """
    key = (
        tuple((i, id(k), id(v), k.weight.device, k.weight.dtype) for i, k, v, _ in layers),
        None if kv is None else id(kv),
        None if qkv is None else id(qkv),
        ctx,
    )
    cache = _PROCESSORS.setdefault(attn, {})
    proc = cache.get(key)
    if proc is None:
        with (
            torch.inference_mode(False),
            torch.no_grad(),
        ):  # ordinary tensors: writable in and out of inference mode
            ip = tuple(
                (i, k, v, torch.zeros((), dtype=k.weight.dtype, device=k.weight.device))
                for i, k, v, _ in layers
            )
        proc = cache[key] = FastAttention(
            ip=ip, qkv=qkv, kv=kv, ctx=fast_context.ContextSlot() if ctx else None
        )
    with torch.no_grad():
        for (_, _, _, tensor), (_, _, _, value) in zip(proc.ip, layers, strict=True):
            tensor.fill_(value)
    return proc


def uniform_ip(options: FastOptions) -> bool:
    """Whether every IP layer keeps an image branch for every adapter slot (a 0-d scale tensor, 0
    where inactive): the paths whose one compiled UNet or CUDA graph serves every preset. The
    pipeline then pads a call's slots to one fixed structure (``injection.fixed_slots``)."""
    return (
        (options.compile and options.compile_scope == "unet") or options.cuda_graphs
    ) and not options.prune_ip


def plan_processors(unet, options: FastOptions, masks: bool = False) -> dict[str, object]:
    """The processors a fast call installs: ``{name: processor}`` for those it replaces."""
    from ..adapter import ip_processors

    ips = ip_processors(unet)
    uniform = uniform_ip(options)
    attn_modules = {
        f"{name}.processor": module
        for name, module in unet.named_modules()
        if hasattr(module, "set_processor") and hasattr(module, "to_q")
    }
    plan: dict[str, object] = {}
    for name, proc in unet.attn_processors.items():
        attn = attn_modules.get(name)
        if attn is None:
            continue
        if name in ips:
            if type(proc).__name__ not in _STOCK_IP_PROCESSORS:
                continue  # someone else's processor (a method's own patch): leave it alone
            if masks or not (options.light_inactive or uniform):
                continue  # diffusers' processor (only it implements ip_adapter_masks)
            layers = _ip_layers(proc, uniform)
            if layers is None:
                continue
            kv = _fused(attn, ("to_k", "to_v")) if options.fuse_qkv and not options.fp8 else None
            plan[name] = _fast_processor(attn, layers, kv=kv, ctx=options.context_kv)
        elif options.fuse_qkv and not options.fp8 and not attn.is_cross_attention:
            qkv = _fused(attn, ("to_q", "to_k", "to_v"))
            if qkv is not None and type(proc).__name__ == "AttnProcessor2_0":
                plan[name] = _fast_processor(attn, qkv=qkv)
    return plan
