"""Which UNet attention blocks receive IP-Adapter features (InstantStyle, arXiv 2404.02733, Sec. 3.3).

This is the only module that spells block names. It reads the cross-attention modules of a
UNet from the model itself, declares the presets as data, and resolves a request (a preset, a
``--blocks`` spec, a global scale) to one scale per cross-attention processor. A name that
matches nothing is an error listing the valid names -- never a silent zero (diffusers'
``set_ip_adapter_scale`` dict silently ignores a misspelt ``block_5``).

Names accepted in a spec, from coarse to fine (the finest match wins):
- a preset: ``style``, ``layout``, ``style+layout``, ``full`` (alias ``all``);
- a block: ``up_blocks.0``, ``mid_block``;
- an attention module: ``up_blocks.0.attentions.1``;
- one transformer layer inside a module: ``up_blocks.0.attentions.1.transformer_blocks.3``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import InstantStyleError

STYLE_BLOCK = "up_blocks.0.attentions.1"  # colour, material, atmosphere
LAYOUT_BLOCK = "down_blocks.2.attentions.1"  # structure, composition
ALL = "*"

# Presets are data: name -> attention modules that get the adapter at full scale.
PRESETS: dict[str, tuple[str, ...]] = {
    "style": (STYLE_BLOCK,),
    "layout": (LAYOUT_BLOCK,),
    "style+layout": (STYLE_BLOCK, LAYOUT_BLOCK),
    "full": (ALL,),
}
PRESET_ALIASES = {"all": "full"}
DEFAULT_PRESET = "style"

# B-LoRA (arXiv 2403.14572) splits content and style between two neighbouring modules.
BLORA_CONTENT_BLOCK = "up_blocks.0.attentions.0"
BLORA_STYLE_BLOCK = STYLE_BLOCK

# Self-attention layers the training-free baselines patch (names as accepted by ``self_attention_layers``).
# StyleAligned (arXiv 2312.02133, Sec. 3) shares attention in every self-attention layer;
# Visual Style Prompting (arXiv 2402.12974, Sec. 4) swaps keys/values in the late ones, up_blocks.1.
STYLE_ALIGNED_LAYERS = (ALL,)
VSP_LAYERS = ("up_blocks.1",)


@dataclass(frozen=True)
class AttentionModule:
    """One ``Transformer2DModel`` of the UNet and its cross-attention processors."""

    name: str  # e.g. "up_blocks.0.attentions.1"
    block: str  # e.g. "up_blocks.0"
    level: str  # "down" | "mid" | "up"
    downsample: int  # latent-grid divisor: 1, 2, 4, ... (4 -> 32x32 for a 1024 px SDXL image)
    channels: int
    layers: int  # transformer blocks inside the module
    processors: tuple[str, ...]  # attn2 processor names, in layer order

    def layer_name(self, i: int) -> str:
        return f"{self.name}.transformer_blocks.{i}"

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(p for p in ("style", "layout") if PRESETS[p] == (self.name,))


def discover(unet) -> list[AttentionModule]:
    """Read the cross-attention modules of any SDXL-family UNet from the model itself."""
    n_levels = len(unet.down_blocks)
    groups = [("down", f"down_blocks.{i}", b, 2**i) for i, b in enumerate(unet.down_blocks)]
    if getattr(unet, "mid_block", None) is not None:
        groups.append(("mid", "mid_block", unet.mid_block, 2 ** (n_levels - 1)))
    groups += [("up", f"up_blocks.{i}", b, 2 ** (n_levels - 1 - i)) for i, b in enumerate(unet.up_blocks)]

    modules = []
    for level, block_name, block, downsample in groups:
        for j, attn_module in enumerate(getattr(block, "attentions", None) or []):
            name = f"{block_name}.attentions.{j}"
            layers = list(getattr(attn_module, "transformer_blocks", []))
            processors = tuple(
                f"{name}.transformer_blocks.{k}.attn2.processor"
                for k, layer in enumerate(layers)
                if getattr(layer, "attn2", None) is not None
            )
            if not processors:
                continue
            channels = getattr(attn_module, "in_channels", None) or layers[0].attn2.to_q.in_features
            modules.append(AttentionModule(name, block_name, level, downsample, channels, len(layers), processors))
    return modules


def valid_names(modules: Iterable[AttentionModule]) -> list[str]:
    """Every name a spec may use on this UNet: presets, blocks, modules, layers."""
    modules = list(modules)
    names = list(PRESETS) + list(PRESET_ALIASES)
    names += sorted({m.block for m in modules})
    names += [m.name for m in modules]
    names += [m.layer_name(i) for m in modules for i in range(m.layers)]
    return names


def parse_spec(spec: str | Mapping[str, float] | None) -> list[tuple[str, float]]:
    """Parse ``"up_blocks.0.attentions.1=1.0,down_blocks.2.attentions.1=0.5"``.

    A name without ``=value`` means 1.0. Values must be finite numbers >= 0.
    """
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        items = []
        for part in (p.strip() for p in str(spec).split(",")):
            if not part:
                continue
            name, sep, value = part.partition("=")
            items.append((name.strip(), value.strip() if sep else 1.0))
    parsed = []
    for name, value in items:
        parsed.append((name, _scale_value(value, f"block scale for '{name}'")))
    if not parsed:
        raise InstantStyleError(f"--blocks: empty spec {spec!r}; give e.g. '{STYLE_BLOCK}=1.0'")
    return parsed


def _scale_value(value, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InstantStyleError(f"{what} is {value!r}, not a number; use e.g. 1.0") from None
    if not math.isfinite(number) or number < 0:
        raise InstantStyleError(f"{what} is {value!r}; it must be a finite number >= 0")
    return number


def preset_spec(mode: str) -> list[tuple[str, float]]:
    """A preset as a spec: its modules at scale 1."""
    return [(_canonical_preset(mode), 1.0)]


def _canonical_preset(name: str) -> str:
    name = PRESET_ALIASES.get(name, name)
    if name not in PRESETS:
        raise InstantStyleError(f"unknown mode {name!r}; valid modes: {', '.join(PRESETS)}")
    return name


def resolve(
    modules: list[AttentionModule], spec: list[tuple[str, float]], scale: float = 1.0
) -> dict[str, float]:
    """Resolve a spec to ``{attn2 processor name: scale}`` for every cross-attention processor.

    Each processor takes the value of the most specific entry that covers it (layer > module >
    block > preset); processors covered by nothing get 0. The result is multiplied by ``scale``.
    Raises on any name that is not a preset, block, module or layer of this UNet.
    """
    scale = _scale_value(scale, "scale")
    by_module = {m.name: m for m in modules}
    by_block: dict[str, list[AttentionModule]] = {}
    for m in modules:
        by_block.setdefault(m.block, []).append(m)
    layer_owner = {m.layer_name(i): (m, i) for m in modules for i in range(m.layers)}

    # rank: 0 preset, 1 block, 2 module, 3 layer. value per (processor) = highest rank wins.
    chosen: dict[str, tuple[int, float, str]] = {}

    def assign(processor: str, rank: int, value: float, source: str) -> None:
        prev = chosen.get(processor)
        if prev is not None and prev[0] == rank and prev[1] != value:
            raise InstantStyleError(
                f"--blocks: '{processor.rsplit('.attn2', 1)[0]}' gets two scales ({prev[1]} from "
                f"'{prev[2]}', {value} from '{source}'); give it once"
            )
        if prev is None or rank >= prev[0]:
            chosen[processor] = (rank, value, source)

    for name, value in spec:
        canonical = PRESET_ALIASES.get(name, name)
        if canonical in PRESETS:
            targets = PRESETS[canonical]
            mods = modules if targets == (ALL,) else [by_module[t] for t in targets if t in by_module]
            if targets != (ALL,) and len(mods) != len(targets):
                missing = [t for t in targets if t not in by_module]
                raise InstantStyleError(
                    f"preset '{canonical}' needs {', '.join(missing)}, which this UNet does not have; "
                    f"use --blocks with one of: {', '.join(m.name for m in modules)}"
                )
            for m in mods:
                for p in m.processors:
                    assign(p, 0, value, name)
        elif name in by_block:
            for m in by_block[name]:
                for p in m.processors:
                    assign(p, 1, value, name)
        elif name in by_module:
            for p in by_module[name].processors:
                assign(p, 2, value, name)
        elif name in layer_owner:
            m, i = layer_owner[name]
            proc = f"{name}.attn2.processor"
            if proc not in m.processors:
                raise InstantStyleError(f"--blocks: layer '{name}' has no cross-attention")
            assign(proc, 3, value, name)
        else:
            raise InstantStyleError(_unknown_name_message(name, modules))

    return {p: (chosen[p][1] * scale if p in chosen else 0.0) for m in modules for p in m.processors}


def _unknown_name_message(name: str, modules: list[AttentionModule]) -> str:
    names = valid_names(modules)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    coarse = list(PRESETS) + [m.name for m in modules]
    return (
        f"unknown block '{name}'{hint}; valid names: {', '.join(coarse)}, a block such as "
        f"'{modules[-1].block if modules else 'up_blocks.0'}', or a layer such as "
        f"'{modules[0].layer_name(0) if modules else STYLE_BLOCK + '.transformer_blocks.0'}' "
        "(`instantstyle blocks` lists them all)"
    )


def active_modules(modules: list[AttentionModule], scales: Mapping[str, float]) -> list[str]:
    """Names of the attention modules with at least one processor at a non-zero scale."""
    return [m.name for m in modules if any(scales.get(p, 0.0) != 0.0 for p in m.processors)]


def describe(modules: list[AttentionModule], sample_size: int | None = None) -> list[dict]:
    """Rows for the ``instantstyle blocks`` table."""
    rows = []
    for m in modules:
        grid = f"{sample_size // m.downsample}x{sample_size // m.downsample}" if sample_size else f"/{m.downsample}"
        rows.append(
            {
                "module": m.name,
                "level": m.level,
                "latent_grid": grid,
                "channels": m.channels,
                "layers": m.layers,
                "role": ",".join(m.roles) or "",
            }
        )
    return rows


def self_attention_layers(modules: list[AttentionModule], names: Iterable[str]) -> list[str]:
    """Resolve names (``*``/a preset, a block, a module or a layer) to ``attn1`` module paths.

    Uses the same vocabulary and the same one-line errors as ``resolve``; every transformer layer
    of SDXL has one self-attention (``attn1``) next to its cross-attention (``attn2``).
    """
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise InstantStyleError(f"no attention layers given; use e.g. '{VSP_LAYERS[0]}' or '{ALL}' for all")
    spec = [("full" if n == ALL else n, 1.0) for n in names]
    scales = resolve(modules, spec)
    return [p.removesuffix(".attn2.processor") + ".attn1" for p, s in scales.items() if s]
