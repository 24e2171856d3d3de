"""Which fast-path pieces a call uses: ``FastOptions``, the named ``--speed`` modes, their checks.

Imports no torch (the request schema and the CLI read the names).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from ..errors import InstantStyleError

if TYPE_CHECKING:
    import torch

SPEEDS = (
    "auto",
    "plain",
    "exact",
    "graphs",
    "fast",
    "max",
    "max-tuned",
    "max-autotune",
    "fp8",
    "fp8-max",
    "cfg-trunc",
    "deepcache",
    "turbo",
)
APPROXIMATE_SPEEDS = ("fp8", "fp8-max", "cfg-trunc", "deepcache", "turbo")
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
VAE_DECODES = ("stock", "auto", "bf16", "fp16", "fp32")  # fast.vae


@dataclass(frozen=True)
class FastOptions:
    """Which fast-path pieces a call uses (each described in ``instantstyle.fast``)."""

    light_inactive: bool = True
    project_once: bool = True
    compile: bool = False
    compile_mode: str | None = None  # None (default inductor) | "max-autotune-no-cudagraphs" | ...
    compile_backend: str = "inductor"  # "eager"/"aot_eager" trace without code generation (tests)
    compile_scope: str = "blocks"  # "blocks" (regional, transformer blocks) | "unet" (the whole forward)
    compile_resnets: bool = False  # blocks scope: also compile the ResnetBlock2D regions
    compile_vae: bool = False  # also compile the VAE decoder
    cuda_graphs: bool = False  # replay the UNet forward as CUDA graphs (fast.unet_graphs)
    fuse_qkv: bool = False
    channels_last: bool = False
    attention: str = "auto"
    fp8: bool = False
    fp8_scaling: str = "tensor"  # "tensor" (fp8.Float8Linear) | "row" (fast.fp8, inside the compiled graph)
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
MAX_TUNED = replace(
    MAX, context_kv=True, prune_ip=True, vae_decode="auto", compile_vae=True, inductor_tuning=True
)
# For servers: Inductor's autotuned kernels (minutes to compile once; cached on disk, see
# fast.compiling.set_cache_dir); "-no-cudagraphs" because the fast path captures its own graphs.
MAX_AUTOTUNE = replace(MAX_TUNED, compile_mode="max-autotune-no-cudagraphs")
FP8_MAX = replace(MAX_TUNED, fp8=True, fp8_scaling="row", fuse_qkv=False)
CFG_TRUNCATION = 0.4  # the named modes' defaults (research: ~40 % of the steps, from the end)
DEEPCACHE_INTERVAL = 2  # DeepCache's uniform schedule, every other step full
COMPILE_SCOPES = ("blocks", "unet")
FP8_SCALINGS = ("tensor", "row")


def options_for(
    speed: str | FastOptions | None,
    device: torch.device | str = "cpu",
    *,
    long_lived: bool = False,
    cfg_truncation: float | None = None,
    deepcache_interval: int | None = None,
) -> FastOptions:
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
        import torch

        cuda = torch.device(device).type == "cuda"
        if speed == "auto":
            speed = ("max" if long_lived else "graphs") if cuda else "exact"
        named = {
            "plain": PLAIN,
            "exact": EXACT,
            "graphs": GRAPHS,
            "fast": FAST,
            "max": MAX,
            "max-tuned": MAX_TUNED,
            "max-autotune": MAX_AUTOTUNE,
            "fp8": replace(FAST, fp8=True, fuse_qkv=False),
            "fp8-max": FP8_MAX,
            "cfg-trunc": replace(MAX_TUNED, cfg_truncation=CFG_TRUNCATION),
            "deepcache": replace(MAX_TUNED, deepcache_interval=DEEPCACHE_INTERVAL),
            "turbo": replace(FP8_MAX, deepcache_interval=DEEPCACHE_INTERVAL),
        }
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
        raise InstantStyleError(
            f"--cfg-truncation {options.cfg_truncation}: must be a fraction of the steps in "
            "[0, 1) (e.g. 0.4 = the last 40 % without CFG); 0 turns it off"
        )
    if (
        isinstance(options.deepcache_interval, bool)
        or not isinstance(options.deepcache_interval, int)
        or options.deepcache_interval < 0
    ):
        raise InstantStyleError(
            f"--deepcache {options.deepcache_interval!r}: must be a whole number >= 0 (2 = the "
            "deep blocks every other step; 0 or 1 turns it off)"
        )
    if options.vae_decode not in VAE_DECODES:
        raise InstantStyleError(f"VAE decode {options.vae_decode!r} is not one of {', '.join(VAE_DECODES)}")
    if options.fp8_scaling not in FP8_SCALINGS:
        raise InstantStyleError(
            f"fp8 scaling {options.fp8_scaling!r} is not one of {', '.join(FP8_SCALINGS)}"
        )
