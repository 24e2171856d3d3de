"""The fast path: scoped speed-ups around one denoising call, each switchable on its own.

Everything here is a patch applied by ``scope(pipe, options)`` for the duration of one pipeline
call and undone in ``finally`` (processors back to the identical objects, ``encoder_hid_proj``
back, compiled wrappers detached, memory format restored). Outside the scope the pipeline is
stock diffusers again, which is what lets the benchmark time both in one process.

Pieces (``FastOptions`` fields), all exact up to floating-point rounding unless marked:

- ``light_inactive``: every cross-attention whose IP scale is 0 gets ``FastCrossAttention`` with
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
  (``instantstyle.graphs``); exact, CUDA only, not under offloading. IP layers are uniform as
  above, so one graph serves every preset and scale.
- ``compile_vae``: ``torch.compile`` of the VAE decoder (the 1024 px decode in float32 is a
  sizeable part of an image's time).
- ``fuse_qkv``: self-attention q/k/v and cross-attention k/v as one matmul (cached weights).
- ``channels_last``: the UNet's convolution weights in NHWC for the call.
- ``attention``: pin the SDPA kernel (``flash``, ``efficient``, ``cudnn``, ``math``).
- ``fp8`` (*approximation*, opt-in, CUDA compute capability >= 8.9): the transformer blocks'
  linears as float8 e4m3 matmuls (``torch._scaled_mm``); ``fp8_scaling="tensor"`` (per-tensor
  scales, ``Float8Linear``) or ``"row"`` (row-wise, ``fast.fp8``: traces into the compiled graph).

Pieces in ``instantstyle.fast`` (one module each), switched here:

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

Memory modes (``apply_memory_mode``, a load-time choice, not per call): ``normal``; ``balanced``
= the text and image encoders stream from the CPU when they run (the UNet, ControlNets and VAE
stay, so the fast path keeps every piece); ``low`` = model CPU offload + VAE tiling/slicing;
``lowest`` = group offloading of everything but the VAE + VAE tiling.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import torch

from . import graphs
from .errors import InstantStyleError
from .fast import cfg as fast_cfg
from .fast import compiling
from .fast import context as fast_context
from .fast import deepcache as fast_deepcache
from .fast import fp8 as fast_fp8
from .fast import vae as fast_vae
from .processors.fast import FastAttention
from .processors.scoped import scoped_forward, scoped_processors

_log = logging.getLogger(__name__)

SPEEDS = ("auto", "plain", "exact", "graphs", "fast", "max", "max-tuned", "max-autotune", "fp8",
          "fp8-max", "cfg-trunc", "deepcache", "turbo")
APPROXIMATE_SPEEDS = ("fp8", "fp8-max", "cfg-trunc", "deepcache", "turbo")
MEMORY_MODES = ("normal", "balanced", "low", "lowest")
MEMORY_CHOICES = ("auto", *MEMORY_MODES)  # "auto": chosen from the card's size (auto_memory)
ENCODERS = ("text_encoder", "text_encoder_2", "image_encoder")  # what "balanced" streams from the CPU
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


@dataclass(frozen=True)
class FastOptions:
    """Which fast-path pieces a call uses (see the module docstring)."""

    light_inactive: bool = True
    project_once: bool = True
    compile: bool = False
    compile_mode: str | None = None  # None (default inductor) | "max-autotune-no-cudagraphs" | ...
    compile_backend: str = "inductor"  # "eager"/"aot_eager" trace without code generation (tests)
    compile_scope: str = "blocks"  # "blocks" (regional, transformer blocks) | "unet" (the whole forward)
    compile_resnets: bool = False  # blocks scope: also compile the ResnetBlock2D regions
    compile_vae: bool = False  # also compile the VAE decoder
    cuda_graphs: bool = False  # replay the UNet forward as CUDA graphs (graphs.py)
    fuse_qkv: bool = False
    channels_last: bool = False
    attention: str = "auto"
    fp8: bool = False
    fp8_scaling: str = "tensor"  # "tensor" (Float8Linear) | "row" (fast.fp8, inside the compiled graph)
    context_kv: bool = False  # cross-attention K/V once per call (fast.context)
    prune_ip: bool = False  # graph paths: no image branch in inactive IP layers (one graph per preset)
    vae_decode: str = "stock"  # "stock" | "auto" | "bf16" | "fp16" | "fp32" (fast.vae)
    inductor_tuning: bool = False  # coordinate-descent tuning + cudnn.benchmark (fast.compiling)
    cfg_truncation: float = 0.0  # approximation: fraction of the steps, from the end, without CFG
    deepcache_interval: int = 0  # approximation: deep blocks every n-th step (0 or 1: every step)

    @property
    def is_plain(self) -> bool:
        return self == PLAIN

    @property
    def exact(self) -> bool:
        """False when an option changes the picture beyond rounding (fp8, CFG truncation, DeepCache)."""
        return not (self.fp8 or self.cfg_truncation > 0 or self.deepcache_interval > 1)

    def approximations(self) -> dict:
        """The picture-changing settings in use (recorded in every output's parameters)."""
        out = {}
        if self.fp8:
            out["fp8"] = self.fp8_scaling
        if self.cfg_truncation > 0:
            out["cfg_truncation"] = self.cfg_truncation
        if self.deepcache_interval > 1:
            out["deepcache_interval"] = self.deepcache_interval
        return out

    def as_dict(self) -> dict:
        return asdict(self)


PLAIN = FastOptions(light_inactive=False, project_once=False)
EXACT = FastOptions()
FAST = FastOptions(compile=True, fuse_qkv=True, channels_last=True)
MAX = FastOptions(compile=True, compile_scope="unet", cuda_graphs=True, fuse_qkv=True)
GRAPHS = FastOptions(cuda_graphs=True, fuse_qkv=True)
# max + the exact pieces not yet measured on a GPU (docs/performance.md, "not yet measured").
MAX_TUNED = replace(MAX, context_kv=True, prune_ip=True, vae_decode="auto", compile_vae=True, inductor_tuning=True)
# For servers: Inductor's autotuned kernels (minutes to compile once; cached on disk, see
# fast.compiling.set_cache_dir); "-no-cudagraphs" because the fast path captures its own graphs.
MAX_AUTOTUNE = replace(MAX_TUNED, compile_mode="max-autotune-no-cudagraphs")
FP8_MAX = replace(MAX_TUNED, fp8=True, fp8_scaling="row", fuse_qkv=False)
CFG_TRUNCATION = 0.4  # the named modes' defaults (research: ~40 % of the steps, from the end)
DEEPCACHE_INTERVAL = 2  # DeepCache's uniform schedule, every other step full
COMPILE_SCOPES = ("blocks", "unet")
FP8_SCALINGS = ("tensor", "row")


def options_for(speed: str | FastOptions | None, device: torch.device | str = "cpu", *,
                long_lived: bool = False, cfg_truncation: float | None = None,
                deepcache_interval: int | None = None) -> FastOptions:
    """Resolve a ``speed`` name to options.

    ``plain``: stock diffusers processors; ``exact``: light inactive blocks + projection once (no
    compilation, the CPU default); ``graphs``: exact + CUDA graphs + fused QKV (no compilation:
    ready in seconds); ``fast``: exact + regional torch.compile + fused QKV + channels-last;
    ``max``: the whole UNet compiled + CUDA graphs + fused QKV (about a minute and a half of
    compilation on first use, then the fastest); ``fp8``: fast + float8 linears (changes the
    picture slightly; opt-in).

    Not yet measured on a GPU (docs/performance.md): ``max-tuned``: max + cross-attention K/V
    once per call + no work in inactive IP layers (one graph per preset) + the VAE decoded in
    bf16, channels-last, compiled + coordinate-descent tuning and cudnn.benchmark (exact);
    ``max-autotune``: max-tuned with Inductor's autotuned kernels, for servers (exact);
    approximations, opt-in: ``fp8-max`` (max-tuned + row-wise fp8 linears inside the compiled
    graph), ``cfg-trunc`` (max-tuned + the last 40 % of the steps without CFG), ``deepcache``
    (max-tuned + the deep blocks every other step), ``turbo`` (fp8-max + deepcache).
    ``cfg_truncation``/``deepcache_interval`` override or add those two on any speed.

    ``auto``: ``exact`` off CUDA; on CUDA ``graphs`` for a process that makes a few images (the
    CLI: compiling would cost more than it saves) and ``max`` for a ``long_lived`` one (the server).
    """
    if isinstance(speed, FastOptions):
        options = speed
    else:
        speed = speed or "auto"
        cuda = torch.device(device).type == "cuda"
        if speed == "auto":
            speed = ("max" if long_lived else "graphs") if cuda else "exact"
        named = {"plain": PLAIN, "exact": EXACT, "graphs": GRAPHS, "fast": FAST, "max": MAX,
                 "max-tuned": MAX_TUNED, "max-autotune": MAX_AUTOTUNE,
                 "fp8": replace(FAST, fp8=True, fuse_qkv=False), "fp8-max": FP8_MAX,
                 "cfg-trunc": replace(MAX_TUNED, cfg_truncation=CFG_TRUNCATION),
                 "deepcache": replace(MAX_TUNED, deepcache_interval=DEEPCACHE_INTERVAL),
                 "turbo": replace(FP8_MAX, deepcache_interval=DEEPCACHE_INTERVAL)}
        if speed not in named:
            raise InstantStyleError(f"--speed {speed!r} is not one of {', '.join(SPEEDS)}")
        options = named[speed]
    if cfg_truncation is not None:
        options = replace(options, cfg_truncation=cfg_truncation)
    if deepcache_interval is not None:
        options = replace(options, deepcache_interval=deepcache_interval)
    check(options)
    return options


def check(options: FastOptions) -> None:
    """One-line errors for values no piece can use."""
    if not 0.0 <= options.cfg_truncation < 1.0:
        raise InstantStyleError(f"--cfg-truncation {options.cfg_truncation}: must be a fraction of the steps in "
                                "[0, 1) (e.g. 0.4 = the last 40 % without CFG); 0 turns it off")
    if isinstance(options.deepcache_interval, bool) or not isinstance(options.deepcache_interval, int) \
            or options.deepcache_interval < 0:
        raise InstantStyleError(f"--deepcache {options.deepcache_interval!r}: must be a whole number >= 0 (2 = the "
                                "deep blocks every other step; 0 or 1 turns it off)")
    if options.vae_decode not in fast_vae.VAE_DECODES:
        raise InstantStyleError(f"VAE decode {options.vae_decode!r} is not one of {', '.join(fast_vae.VAE_DECODES)}")
    if options.fp8_scaling not in FP8_SCALINGS:
        raise InstantStyleError(f"fp8 scaling {options.fp8_scaling!r} is not one of {', '.join(FP8_SCALINGS)}")


def auto_memory(device: torch.device | str) -> str:
    """The memory mode for ``--memory auto``: from the card's total memory, by the peaks measured
    on full-size SDXL at 1024 px (README, 'Memory modes'): normal needs ~18 GiB with a ControlNet,
    balanced ~13.2, low ~7.2 (Plus ~11.6), lowest ~1.6 (Plus ~3.5)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "normal"
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    if total >= 22:
        return "normal"
    if total >= 14.5:
        return "balanced"
    if total >= 10:
        return "low"
    return "lowest"


# ---------------------------------------------------------------------- projection once


class ProjectOnce(torch.nn.Module):
    """Wraps ``unet.encoder_hid_proj``: same input tensors -> the tokens computed the first time.

    The key is the identity, storage and version counter (when the tensor has one) of every
    input tensor, so a new or modified embedding is projected again. Exact by construction.
    """

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self._inputs = None  # keeps the keyed tensors alive (ids stay unique)
        self._key = None
        self._out = None
        self.calls = 0  # projections actually computed (for tests)

    @staticmethod
    def _key_of(embeds) -> tuple:
        items = embeds if isinstance(embeds, (list, tuple)) else [embeds]
        # inference tensors have no version counter; the pipeline never writes to its embeddings
        return tuple((id(t), t.data_ptr(), None if t.is_inference() else t._version, tuple(t.shape)) for t in items)

    def forward(self, image_embeds):
        key = self._key_of(image_embeds)
        if key != self._key:
            self._out = self.inner(image_embeds)
            self._inputs, self._key = image_embeds, key
            self.calls += 1
        return self._out

    def __getattr__(self, name):  # num_ip_adapters, image_projection_layers, ... from the wrapped module
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


# ---------------------------------------------------------------------- fp8 linears


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
            w8 = (w / sw).clamp(-self.FP8_MAX, self.FP8_MAX).to(torch.float8_e4m3fn)  # e4m3fn: no inf, NaN past 448
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


# ---------------------------------------------------------------------- the scope

_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Attention -> (source key, weight)
_FP8: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Linear -> Float8Linear
_COMPILED_ATTR = "_instantstyle_compiled"  # the block's compiled callables, kept for reuse
_STOCK_IP_PROCESSORS = ("IPAdapterAttnProcessor2_0", "IPAdapterAttnProcessor")


def transformer_blocks(unet) -> list[torch.nn.Module]:
    """The repeated ``BasicTransformerBlock`` modules (the regions we compile)."""
    from diffusers.models.attention import BasicTransformerBlock

    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


def _fused(attn, names: tuple[str, ...]) -> torch.Tensor | None:
    """``cat([to_q, to_k, to_v])`` (or k, v) weights, without a second copy in memory.

    The first time, the layers' weights are moved into one contiguous tensor and each layer's
    ``weight`` becomes a view of its rows: the values are unchanged (so the plain path and stock
    diffusers see the same numbers), and fusing costs no memory (a separate fused copy would be
    ~1.3 GB in fp16 on SDXL). None if the layers have biases or are not plain ``nn.Linear``.
    """
    layers = [getattr(attn, n) for n in names]
    if any(getattr(layer, "bias", None) is not None or not isinstance(layer, torch.nn.Linear) for layer in layers):
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


_PROCESSORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Attention -> {structure: FastAttention}


def _fast_processor(attn, layers=(), kv: torch.Tensor | None = None, qkv: torch.Tensor | None = None,
                    ctx: bool = False) -> FastAttention:
    """The layer's ``FastAttention`` for this structure, made once and reused by every call.

    Reuse keeps the objects (and so compiled graphs' guards and captured CUDA graphs) stable; the
    scales are 0-d tensors set in place, so a scale change is data, never structure. The cached
    processor holds its weights, so the ids in the key cannot be reused by other objects.
    """
    key = (tuple((i, id(k), id(v), k.weight.device, k.weight.dtype) for i, k, v, _ in layers),
           None if kv is None else id(kv), None if qkv is None else id(qkv), ctx)
    cache = _PROCESSORS.setdefault(attn, {})
    proc = cache.get(key)
    if proc is None:
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: writable in and out of inference mode
            ip = tuple((i, k, v, torch.zeros((), dtype=k.weight.dtype, device=k.weight.device))
                       for i, k, v, _ in layers)
        proc = cache[key] = FastAttention(ip=ip, qkv=qkv, kv=kv, ctx=fast_context.ContextSlot() if ctx else None)
    with torch.no_grad():
        for (_, _, _, tensor), (_, _, _, value) in zip(proc.ip, layers, strict=True):
            tensor.fill_(value)
    return proc


def uniform_ip(options: FastOptions) -> bool:
    """Whether every IP layer keeps an image branch for every adapter slot (a 0-d scale tensor, 0
    where inactive): the paths whose one compiled UNet or CUDA graph serves every preset. The
    pipeline then pads a call's slots to one fixed structure (``injection.fixed_slots``)."""
    return ((options.compile and options.compile_scope == "unet") or options.cuda_graphs) and not options.prune_ip


def plan_processors(unet, options: FastOptions, masks: bool = False) -> dict[str, object]:
    """The processors a fast call installs: ``{name: processor}`` for those it replaces."""
    from .adapter import ip_processors

    ips = ip_processors(unet)
    uniform = uniform_ip(options)
    attn_modules = {f"{name}.processor": module for name, module in unet.named_modules()
                    if hasattr(module, "set_processor") and hasattr(module, "to_q")}
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


@contextlib.contextmanager
def _project_once(unet):
    inner = getattr(unet, "encoder_hid_proj", None)
    if inner is None or getattr(unet.config, "encoder_hid_dim_type", None) != "ip_image_proj":
        yield None
        return
    wrapper = ProjectOnce(inner)
    unet.encoder_hid_proj = wrapper
    try:
        yield wrapper
    finally:
        unet.encoder_hid_proj = inner


def configure_dynamo(limit: int = 64) -> None:
    """Room for one graph per distinct block shape x processor kind x batch size."""
    import torch._dynamo

    cfg = torch._dynamo.config
    cfg.cache_size_limit = max(cfg.cache_size_limit, limit)
    cfg.accumulated_cache_size_limit = max(cfg.accumulated_cache_size_limit, 4 * limit)


@contextlib.contextmanager
def _compiled_blocks(unet, options: FastOptions):
    """Attach each block's cached ``torch.compile`` wrapper for the call; detach afterwards."""
    blocks = transformer_blocks(unet)
    if options.compile_resnets:
        from diffusers.models.resnet import ResnetBlock2D

        blocks += [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    configure_dynamo()
    key = compiling.compile_key("blocks", options)
    kwargs = compiling.compile_kwargs(options.compile_backend, options.compile_mode, options.inductor_tuning)
    saved = [b._compiled_call_impl for b in blocks]
    try:
        for b in blocks:
            cache = b.__dict__.setdefault(_COMPILED_ATTR, {})
            if key not in cache:
                cache[key] = torch.compile(b._call_impl, dynamic=False, **kwargs)
            b._compiled_call_impl = cache[key]
        yield
    finally:
        for b, fn in zip(blocks, saved, strict=True):
            b._compiled_call_impl = fn


@contextlib.contextmanager
def _fp8_linears(unet, scaling: str = "tensor"):
    """Swap the transformer blocks' big linears for cached float8 twins (``Float8Linear``, or
    ``fast.fp8.RowwiseFloat8Linear`` for ``scaling="row"``)."""
    kind = fast_fp8.RowwiseFloat8Linear if scaling == "row" else Float8Linear
    swaps = []  # (parent, child name, original)
    for block in transformer_blocks(unet):
        skip = {id(m) for attn in (block.attn1, getattr(block, "attn2", None)) if attn is not None
                and isinstance(attn._modules.get("processor"), torch.nn.Module)
                for m in attn._modules["processor"].modules()}  # IP weights act on 4 tokens: keep them
        for parent in block.modules():
            if id(parent) in skip:
                continue
            for child_name, child in list(parent._modules.items()):
                if not isinstance(child, torch.nn.Linear) or child.in_features % 16 or child.out_features % 16:
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


@contextlib.contextmanager
def _channels_last(unet):
    # Outside inference mode, so the converted weights stay ordinary tensors (usable for training later).
    with torch.inference_mode(False), torch.no_grad():
        unet.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            unet.to(memory_format=torch.contiguous_format)


def _sdpa_backend(name: str):
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    return sdpa_kernel([backend])


def _wrapped_forward(module, wrap):
    """``module.forward = wrap(current forward)`` for the block (``processors.scoped.scoped_forward``)."""
    return scoped_forward({"module": module}, lambda _m, inner: wrap(inner))


def _unet_sdpa_backend(unet, name: str):
    """Pin the SDPA kernel inside the UNet's forward only: the VAE's single 512-wide head has no
    flash kernel, so a pipeline-wide pin would fail in the decoder."""
    if name == "auto":
        return contextlib.nullcontext()

    def wrap(inner):
        def forward(*args, **kwargs):
            with _sdpa_backend(name):
                return inner(*args, **kwargs)
        return forward

    return _wrapped_forward(unet, wrap)


def _compiled_unet(unet, options: FastOptions):
    """The whole UNet forward as one cached ``torch.compile`` graph (``compile_scope="unet"``)."""
    configure_dynamo()
    cache = unet.__dict__.setdefault(_COMPILED_ATTR, {})
    key = compiling.compile_key("unet", options)  # everything baked in at trace time
    if key not in cache:
        kwargs = compiling.compile_kwargs(options.compile_backend, options.compile_mode, options.inductor_tuning)
        cache[key] = torch.compile(type(unet).forward.__get__(unet), dynamic=False, **kwargs)
    return _wrapped_forward(unet, lambda inner: cache[key])


@contextlib.contextmanager
def _compiled_decoder(vae, options: FastOptions):
    """The VAE decoder compiled (cached on the module, attached for the call only)."""
    decoder = getattr(vae, "decoder", None)
    if decoder is None:
        yield
        return
    cache = decoder.__dict__.setdefault(_COMPILED_ATTR, {})
    key = compiling.compile_key("vae", options)
    if key not in cache:
        kwargs = compiling.compile_kwargs(options.compile_backend, options.compile_mode, options.inductor_tuning)
        cache[key] = torch.compile(decoder._call_impl, dynamic=False, **kwargs)
    saved = decoder._compiled_call_impl
    decoder._compiled_call_impl = cache[key]
    try:
        yield
    finally:
        decoder._compiled_call_impl = saved


def fast_decoder(pipe, options: FastOptions):
    """The VAE decoder twin a call decodes with (``fast.vae``), or None for the stock decode."""
    if options.vae_decode == "stock" or not fast_vae.usable(pipe):
        return None
    vae = pipe.vae
    return fast_vae.twin(vae, fast_vae.decode_dtype(vae, options.vae_decode), channels_last=True)


def decode_latents(pipe, latents: torch.Tensor, decoder, options: FastOptions, output_type: str = "pil"):
    """Decode with the twin; compiled (cached per compile key) when ``compile_vae``."""
    forward = None
    if options.compile_vae:
        configure_dynamo()
        key = compiling.compile_key("vae-twin", options)
        if key not in decoder.compiled:
            kwargs = compiling.compile_kwargs(options.compile_backend, options.compile_mode, options.inductor_tuning)
            decoder.compiled[key] = torch.compile(decoder, dynamic=False, **kwargs)
        forward = decoder.compiled[key]
    return fast_vae.decode(pipe, latents, decoder, forward, output_type)


_GRAPHS_ATTR = "_instantstyle_graphs"
# Processors whose __call__ keeps no state between calls: their Python runs once, at capture.
_GRAPH_SAFE_PROCESSORS = ("FastAttention", "AttnProcessor2_0", "AttnProcessor", "FusedAttnProcessor2_0",
                          "IPAdapterAttnProcessor2_0", "IPAdapterAttnProcessor")


def graph_cache(unet, capture=None) -> graphs.GraphCache:
    """The UNet's CUDA-graph cache (made on first use; ``capture`` replaces the capturer, for tests)."""
    cache = unet.__dict__.get(_GRAPHS_ATTR)
    if cache is None or capture is not None:
        cache = unet.__dict__[_GRAPHS_ATTR] = graphs.GraphCache(capture)
    return cache


def release_graphs(unet) -> None:
    """Drop the UNet's captured CUDA graphs and their memory pool."""
    unet.__dict__.pop(_GRAPHS_ATTR, None)


def graphs_usable(unet, device: torch.device) -> bool:
    """CUDA graphs need a CUDA device (or a test capturer) and stateless attention processors."""
    cache = unet.__dict__.get(_GRAPHS_ATTR)
    if device.type != "cuda" and (cache is None or isinstance(cache.capture, graphs.CudaCapture)):
        return False
    return all(type(p).__name__ in _GRAPH_SAFE_PROCESSORS for p in unet.attn_processors.values())


def _graphed_unet(unet, options: FastOptions, device: torch.device, phase=None):
    """Replay the UNet forward as CUDA graphs for the call (see ``instantstyle.graphs``).
    ``phase()``, when given, names Python decisions that differ between the call's steps
    (DeepCache's full/cached step): part of each graph's key."""
    cache = graph_cache(unet)
    procs = tuple(unet.attn_processors.values())
    weights = tuple(t.data_ptr() for t in itertools.chain(unet.parameters(), unet.buffers()))
    # The image projection's modules (slot wrappers included: their Python runs at capture only)
    # and the versions of their weights: a swapped or rewritten projection captures anew.
    projection = getattr(unet, "encoder_hid_proj", None)
    projection_modules = tuple(projection.modules()) if projection is not None else ()
    context = (options, tuple(id(p) for p in procs), hash(weights), len(weights),
               graphs.modules_key(projection_modules))

    def wrap(inner):
        def forward(*args, **kwargs):
            if torch.is_grad_enabled() or cache.failed:
                return inner(*args, **kwargs)
            args, kwargs = graphs.timestep_as_tensor(args, kwargs, device)
            try:
                key = context if phase is None else (context, phase())
                out = cache.call(inner, args, kwargs, key, keep=(procs, projection_modules))
            except Exception as exc:  # a capture the kernels or driver refuse: eager from now on, said once
                cache.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                cache.clear()
                _log.warning("CUDA graphs disabled for this model (%s); running without them", cache.failed)
                return inner(*args, **kwargs)
            return inner(*args, **kwargs) if out is graphs.UNCACHEABLE else out
        return forward

    return _wrapped_forward(unet, wrap)


def offloaded(unet, device: torch.device) -> bool:
    """True when the UNet's weights move during a call (model, sequential or group offload)."""
    return unet.device != device or any(
        hasattr(m, "_hf_hook") or getattr(m, "_diffusers_hook", None) is not None for m in unet.modules()
    )


def effective(options: FastOptions, unet, device: torch.device) -> FastOptions:
    """The pieces a call can really use on this UNet and device (what ``scope`` yields)."""
    if options.attention not in ATTENTION_BACKENDS:
        raise InstantStyleError(f"attention backend {options.attention!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
    if options.compile_scope not in COMPILE_SCOPES:
        raise InstantStyleError(f"compile scope {options.compile_scope!r} is not one of {', '.join(COMPILE_SCOPES)}")
    check(options)
    if offloaded(unet, device):
        # Weights move between devices during the call: pieces that hold tensors (fused weights,
        # scale tensors, K/V buffers, compiled graphs, CUDA graphs, memory formats, the VAE twin)
        # would be stale. Keep the module-level ones (and the approximations, which hold activations only).
        return replace(options, light_inactive=False, fuse_qkv=False, compile=False, channels_last=False,
                       fp8=False, attention="auto", cuda_graphs=False, compile_vae=False, context_kv=False,
                       prune_ip=False, vae_decode="stock", inductor_tuning=False)
    if options.compile and options.compile_scope == "unet" and "forward" in unet.__dict__:
        options = replace(options, compile_scope="blocks")  # someone wrapped the forward: keep their wrapper
    if options.cuda_graphs:
        if not graphs_usable(unet, device):
            options = replace(options, cuda_graphs=False)
        else:
            # Graphs bake in weight addresses (channels-last would re-lay the weights every call)
            # and run the projection inside the graph (a per-call Python cache cannot).
            options = replace(options, channels_last=False, project_once=False)
    if options.compile and options.compile_scope == "unet":
        options = replace(options, project_once=False)  # a Python-side cache inside one graph: no
    return options


@contextlib.contextmanager
def _outer_forward(unet, hooks):
    """Run ``hook(args, kwargs)`` before every UNet call, outside any compiled region or CUDA
    graph (eager Python: K/V fills, the step counter, argument fixes). A hook may return new
    ``(args, kwargs)``."""
    def wrap(inner):
        def forward(*args, **kwargs):
            for hook in hooks:
                fixed = hook(args, kwargs)
                if fixed is not None:
                    args, kwargs = fixed
            return inner(*args, **kwargs)
        return forward

    with _wrapped_forward(unet, wrap):
        yield


@contextlib.contextmanager
def scope(pipe, options: FastOptions | str | None = "auto", cross_attention_kwargs: Mapping | None = None):
    """Apply the fast path to ``pipe.unet`` for one call; everything is restored on exit.

    Reads the IP processors' current scales (so enter it *inside* ``adapter.scoped_scales``).
    With ``ip_adapter_masks`` in ``cross_attention_kwargs`` the IP layers keep diffusers'
    processors (only they implement masks); the rest of the fast path still applies. Yields the
    options really used (``effective``).
    """
    unet = pipe.unet
    device = getattr(pipe, "_execution_device", unet.device)
    options = options_for(options, device)
    if options.fp8 and device.type == "cuda" and not fp8_supported(device):
        raise InstantStyleError("--speed fp8 needs a GPU with float8 matmuls (compute capability >= 8.9, "
                                "e.g. H100/L40/RTX 4090); use --speed fast")
    options = effective(options, unet, device)
    if options.is_plain:
        yield options
        return
    masks = bool(cross_attention_kwargs and cross_attention_kwargs.get("ip_adapter_masks") is not None)
    with contextlib.ExitStack() as stack:
        if options.fp8:
            stack.enter_context(_fp8_linears(unet, options.fp8_scaling))
        plan = plan_processors(unet, options, masks)
        stack.enter_context(scoped_processors(unet, plan))
        deep = None
        if options.deepcache_interval > 1:
            deep = stack.enter_context(fast_deepcache.wrapped_blocks(fast_deepcache.DeepCache.for_unet(
                unet, options.deepcache_interval)))
        if options.inductor_tuning:
            stack.enter_context(compiling.cudnn_benchmark(True))
        if options.project_once:
            stack.enter_context(_project_once(unet))
        if options.channels_last:
            stack.enter_context(_channels_last(unet))
        if options.compile and options.compile_scope == "unet":
            stack.enter_context(_compiled_unet(unet, options))
        elif options.compile:
            stack.enter_context(_compiled_blocks(unet, options))
        if options.compile_vae and getattr(pipe, "vae", None) is not None and fast_decoder(pipe, options) is None:
            stack.enter_context(_compiled_decoder(pipe.vae, options))
        stack.enter_context(_unet_sdpa_backend(unet, options.attention))
        if options.cuda_graphs:
            if not graphs_usable(unet, device):  # processors as installed (a method's own may be stateful)
                options = replace(options, cuda_graphs=False)
            else:
                stack.enter_context(_graphed_unet(unet, options, device, deep.phase if deep is not None else None))
        hooks = []
        if options.cfg_truncation > 0:
            hooks.append(fast_cfg.CondHalf())
        if deep is not None:
            hooks.append(deep.before_forward)
        if options.context_kv:
            modules = {f"{name}.processor": m for name, m in unet.named_modules() if hasattr(m, "set_processor")}
            layers = [(modules[name], p) for name, p in plan.items()
                      if isinstance(p, FastAttention) and p.ctx is not None]
            if layers:
                stack.enter_context(_context(unet, layers, hooks))
        if hooks:
            stack.enter_context(_outer_forward(unet, hooks))
        yield options


def _context(unet, layers, hooks):
    """The K/V cache of this call (``fast.context``), as a hook of the outer forward."""
    cache = fast_context.ContextCache(unet, layers)
    unet.__dict__["_instantstyle_context"] = cache  # the last call's, for tests and the benchmark
    hooks.append(cache.before_forward)
    return contextlib.nullcontext(cache)


# ---------------------------------------------------------------------- memory modes


_GROUP_OFFLOADED: weakref.WeakSet = weakref.WeakSet()  # modules under diffusers' group offloading


def _group_offload(pipe, device: torch.device, exclude: tuple[str, ...]) -> None:
    """diffusers' group offloading (leaf level, next layer prefetched on a CUDA stream) for every
    component not in ``exclude``. Idempotent per module: pipelines made with ``from_pipe`` share
    modules, and a module must not get the hooks twice."""
    from diffusers.hooks import apply_group_offloading

    for name, module in pipe.components.items():
        if name in exclude or not isinstance(module, torch.nn.Module) or module in _GROUP_OFFLOADED:
            continue
        apply_group_offloading(module, onload_device=device, offload_device=torch.device("cpu"),
                               offload_type="leaf_level", use_stream=True)
        _GROUP_OFFLOADED.add(module)


def apply_memory_mode(pipe, mode: str, device: torch.device | str) -> None:
    """Load-time memory layout.

    - ``normal``: everything on ``device``.
    - ``balanced``: the text encoders and the image encoder (5 GB of SDXL's 12 in fp16) live on
      the CPU and stream in layer by layer when they run (group offloading with prefetch); the
      UNet, ControlNets and VAE stay on the GPU, so the fast path keeps every piece. Costs the
      prompt encoding's transfer (~1.6 GB per call) and, on an embedding-cache miss, the image
      encoder's (~3.7 GB).
    - ``low``: model CPU offload (one model on the GPU at a time) + VAE tiling and slicing.
    - ``lowest``: group offloading of every model but the VAE (weights stream in layer by layer,
      the next layer's copy overlapping the current layer's compute) + VAE tiling; sequential
      offload where group offloading is unavailable.
    """
    device = torch.device(device)
    if mode not in MEMORY_MODES:
        raise InstantStyleError(f"--memory {mode!r} is not one of {', '.join(MEMORY_MODES)}")
    release_caches(pipe.unet)  # weights are about to move: cached copies and captured addresses go stale
    if getattr(pipe, "vae", None) is not None:
        fast_vae.release(pipe.vae)
    if mode == "normal":
        pipe.to(device)
        return
    if device.type != "cuda":
        raise InstantStyleError(f"--memory {mode} offloads to the CPU between uses of a GPU; it needs --device cuda")
    if mode == "balanced":
        resident = tuple(name for name, module in pipe.components.items()
                         if isinstance(module, torch.nn.Module) and name not in ENCODERS)
        for name in resident:
            getattr(pipe, name).to(device)
        _group_offload(pipe, device, exclude=resident)
        return
    if mode == "low":
        pipe.enable_model_cpu_offload(device=device)
    else:
        try:
            import diffusers.hooks  # noqa: F401
        except ImportError:  # pragma: no cover - older diffusers
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            # The VAE stays on the GPU (0.2 GB, decoded in tiles): SDXL's pipelines upcast it to
            # float32 with .to() around decoding, which group offloading's CPU copies do not follow
            # (seen on an H200: "Input type (float) and bias type (c10::Half)").
            pipe.vae.to(device)
            _group_offload(pipe, device, exclude=("vae",))
    vae_tiles(pipe.vae, small=True)


# SDXL's VAE tiles at its sample_size (1024 px), so "tiling" never splits a 1024 px decode, whose
# float32 activations peak at ~3 GiB. The low-memory modes decode in 512 px tiles (25% overlap,
# blended: a small, documented difference in the picture, as with any tiled decode).
SMALL_VAE_TILE = 512
_VAE_TILE_DEFAULTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vae_tiles(vae, small: bool) -> None:
    """``small``: tiled + sliced decoding in ``SMALL_VAE_TILE`` px tiles; else the VAE's defaults
    (no tiling, no slicing)."""
    if not hasattr(vae, "tile_sample_min_size"):
        if small:
            vae.enable_tiling()
        return
    defaults = _VAE_TILE_DEFAULTS.setdefault(vae, (vae.tile_sample_min_size, vae.tile_latent_min_size))
    if small:
        factor = defaults[0] // defaults[1]  # pixels per latent (8)
        size = min(SMALL_VAE_TILE, defaults[0])
        vae.tile_sample_min_size, vae.tile_latent_min_size = size, size // factor
        vae.enable_tiling()
        vae.enable_slicing()
    else:
        vae.tile_sample_min_size, vae.tile_latent_min_size = defaults
        vae.disable_tiling()
        vae.disable_slicing()


def release_caches(unet) -> None:
    """Forget what the fast path cached for ``unet`` (fused weights, processors, fp8 twins, CUDA
    graphs): before its weights move, so no stale copy keeps GPU memory (seen on an H200: the
    fused QKV weights, 1.2 GiB, stayed on the GPU under group offloading)."""
    for module in unet.modules():
        _FUSED.pop(module, None)
        _PROCESSORS.pop(module, None)
        _FP8.pop(module, None)
    release_graphs(unet)
    fast_deepcache.release(unet)
