"""Which UNet attention blocks receive IP-Adapter features (InstantStyle, arXiv 2404.02733, Sec. 3.3).

This is the only module that spells block names. It reads the cross-attention modules of a
UNet from the model itself, declares the presets as data, and resolves a request (a preset, a
``--blocks`` spec, a global scale) to one scale per cross-attention processor and CFG branch. A name that
matches nothing is an error listing the valid names -- never a silent zero (diffusers'
``set_ip_adapter_scale`` dict silently ignores a misspelt ``block_5``).

Every family (``family(unet)``: SDXL or SD1.5, read from the UNet's structure) has its own
preset table with the same preset names (``FAMILY_PRESETS``); the modules carry their family.

Names accepted in a spec, from coarse to fine (the finest match wins):
- a preset: ``style``, ``layout``, ``style+layout``, ``full`` (alias ``all``), ``strong``,
  ``composition``, ``precise`` (their blocks depend on the family);
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

STYLE_BLOCK = "up_blocks.0.attentions.1"  # SDXL: colour, material, atmosphere
LAYOUT_BLOCK = "down_blocks.2.attentions.1"  # SDXL: structure, composition
ALL = "*"
FAMILIES = ("sdxl", "sd15")

# Which half of the classifier-free-guidance batch receives the reference's image tokens:
# "cond" = the usual IP-Adapter (the unconditional half gets the negative: zeros or --negative-style);
# "uncond" = the unconditional half gets the reference, the conditional half zero tokens, so guidance
# pushes the picture *away* from what that block carries (ComfyUI_IPAdapter_plus "style transfer
# precise", InvokeAI ``style_precise``); "both" = both halves get the reference.
BRANCHES = ("cond", "uncond", "both")


@dataclass(frozen=True)
class Injection:
    """One entry of a preset: these modules or blocks get the reference in this branch at this scale."""

    target: str | tuple[str, ...]  # a module, a block, ALL, or several modules/blocks
    scale: float = 1.0  # multiplied by the request's --scale
    branch: str = "cond"
    boost: bool = False  # also multiplied by --layout-boost

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target,) if isinstance(self.target, str) else tuple(self.target)

    @property
    def label(self) -> str:
        return "every module" if self.targets == (ALL,) else " + ".join(self.targets)

    def as_dict(self) -> dict:
        return {
            "blocks": self.label,
            "branch": self.branch,
            "scale": self.scale,
            **({"boost": "--layout-boost"} if self.boost else {}),
        }


def _presets(style: str | tuple[str, ...], layout: str | tuple[str, ...]) -> dict[str, tuple[Injection, ...]]:
    """A family's presets from its style and layout blocks (the same shapes for every family)."""
    return {
        "style": (Injection(style),),
        "layout": (Injection(layout),),
        "style+layout": (Injection(style), Injection(layout)),
        "full": (Injection(ALL),),
        "strong": (Injection(ALL), Injection(layout, scale=0.0)),
        "composition": (Injection(layout),),
        "precise": (Injection(style), Injection(layout, branch="uncond", boost=True)),
    }


# Presets are data: name -> injections, applied in order (a later entry overrides an earlier one
# on the same processors and branch). A family's table names only its style and layout blocks.
#   style, layout, style+layout, full: InstantStyle's README and diffusers' scale dicts.
#   composition: the layout block only (ComfyUI "composition", InvokeAI ``composition``) = layout.
#   strong: every module except the layout block (ComfyUI "strong style transfer", InvokeAI
#     ``style_strong``; InvokeAI's SDXL list also names 8 modules SDXL does not have).
#   precise: the style block as usual + the layout block in the unconditional branch only, its
#     scale times --layout-boost (ComfyUI "style transfer precise" with its style_boost, default 1).
# SDXL: one module each (InstantStyle's infer_style.py, ``up_blocks.0.attentions.1`` /
# ``down_blocks.2.attentions.1``).
PRESETS: dict[str, tuple[Injection, ...]] = _presets(STYLE_BLOCK, LAYOUT_BLOCK)
# SD1.5: whole blocks, as InstantStyle's infer_style_sd15.py: style = ``up_blocks.1``, style+layout =
# ``down_blocks.2``, ``mid_block``, ``up_blocks.1`` (its comments call both "experimental, not obvious
# as SDXL"). Our choice where the script is silent: layout (and composition) = style+layout minus
# style = ``down_blocks.2`` + ``mid_block``; strong = every module but those; precise = up_blocks.1 +
# those two in the unconditional branch (docs/families.md).
SD15_STYLE_BLOCKS = ("up_blocks.1",)
SD15_LAYOUT_BLOCKS = ("down_blocks.2", "mid_block")
SD15_PRESETS: dict[str, tuple[Injection, ...]] = _presets(SD15_STYLE_BLOCKS, SD15_LAYOUT_BLOCKS)
FAMILY_PRESETS: dict[str, dict[str, tuple[Injection, ...]]] = {"sdxl": PRESETS, "sd15": SD15_PRESETS}
PRESET_ALIASES = {"all": "full"}
DEFAULT_PRESET = "style"


def presets(family: str = "sdxl") -> dict[str, tuple[Injection, ...]]:
    """The preset table of a family (``family(unet)``)."""
    return FAMILY_PRESETS[family]


# B-LoRA (arXiv 2403.14572) splits content and style between two neighbouring modules. Its
# authors publish SDXL only; on SD1.5 ``blora_blocks`` is a one-line error.
BLORA_CONTENT_BLOCK = "up_blocks.0.attentions.0"
BLORA_STYLE_BLOCK = STYLE_BLOCK

# Self-attention layers the training-free baselines patch (names as accepted by ``self_attention_layers``).
# StyleAligned (arXiv 2312.02133, Sec. 3) shares attention in every self-attention layer;
# Visual Style Prompting (arXiv 2402.12974, Sec. 4) swaps keys/values in the late ones, up_blocks.1.
# Both are implemented on SDXL (their authors' SDXL scripts); SD1.5 is refused by ``methods``.
STYLE_ALIGNED_LAYERS = (ALL,)
VSP_LAYERS = ("up_blocks.1",)
# The families each baseline is implemented for (``methods.run_method`` refuses the others).
METHOD_FAMILIES = {"style-aligned": ("sdxl",), "visual-style-prompting": ("sdxl",), "b-lora": ("sdxl",)}


def blora_blocks(family: str = "sdxl") -> tuple[str, str]:
    """B-LoRA's (content, style) modules; SDXL only (arXiv 2403.14572 and its code are SDXL)."""
    if family != "sdxl":
        raise InstantStyleError(
            f"B-LoRA is defined on SDXL's up_blocks.0 (arXiv 2403.14572); this base is {FAMILY_LABELS[family]}: "
            "use an SDXL base"
        )
    return BLORA_CONTENT_BLOCK, BLORA_STYLE_BLOCK


FAMILY_LABELS = {"sdxl": "SDXL", "sd15": "SD1.5"}


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
    family: str = "sdxl"  # the UNet's family (``family(unet)``), whose presets apply

    def layer_name(self, i: int) -> str:
        return f"{self.name}.transformer_blocks.{i}"

    @property
    def roles(self) -> tuple[str, ...]:
        """``style`` / ``layout`` when the family's preset of that name covers this module."""
        table = presets(self.family)
        return tuple(
            p for p in ("style", "layout") if any(t in (self.name, self.block) for t in table[p][0].targets)
        )


def _attention_pattern(unet) -> tuple[tuple[bool, ...], tuple[bool, ...], bool]:
    """Which down and up blocks carry cross-attention, and whether ``proj_in`` is a linear layer."""

    def has_attn(block) -> bool:
        return bool(getattr(block, "attentions", None)) and getattr(block, "has_cross_attention", True)

    down = tuple(has_attn(b) for b in unet.down_blocks)
    up = tuple(has_attn(b) for b in unet.up_blocks)
    first = next((b.attentions[0] for b in (*unet.down_blocks, *unet.up_blocks) if has_attn(b)), None)
    linear = first is not None and type(getattr(first, "proj_in", None)).__name__ == "Linear"
    return down, up, linear


def _structure_family(unet) -> str | None:
    """``sdxl`` | ``sd15`` | ``sd2`` from the UNet's structure, None for anything else.

    SDXL: 3 levels, cross-attention in down 1-2 and up 0-1. SD1.x and SD2.x: 4 levels, cross-attention
    in down 0-2 and up 1-3; SD1.x projects into its transformers with 1x1 convolutions, SD2.x with
    linear layers. Read from the modules, never from names or config ids.
    """
    down, up, linear = _attention_pattern(unet)
    if down == (False, True, True) and up == (True, True, False):
        return "sdxl"
    if down == (True, True, True, False) and up == (False, True, True, True):
        return "sd2" if linear else "sd15"
    return None


def family(unet) -> str:
    """``"sdxl"`` | ``"sd15"``: the UNet's model family, read from its structure (``_structure_family``).

    Anything else (SD2.x, a refiner, an unknown layout) is a one-line error.
    """
    found = _structure_family(unet)
    if found in FAMILIES:
        return found
    what = "a Stable Diffusion 2.x UNet" if found == "sd2" else "a UNet of no supported family"
    raise InstantStyleError(f"the base model's UNet is {what}; supported: SDXL and SD1.5 bases")


def family_of(modules: Iterable[AttentionModule]) -> str:
    """The family recorded on ``discover``'s modules (``sdxl`` for an empty list)."""
    return next((m.family for m in modules), "sdxl")


def discover(unet) -> list[AttentionModule]:
    """Read the cross-attention modules of an SDXL or SD1.5 UNet from the model itself.

    Each module records the UNet's family (``family``), whose presets then apply; a UNet of no
    known family is read all the same, with SDXL's presets (which then name absent modules: a
    one-line error when used).
    """
    fam = _structure_family(unet)
    fam = fam if fam in FAMILIES else "sdxl"
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
            modules.append(
                AttentionModule(name, block_name, level, downsample, channels, len(layers), processors, fam)
            )
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
    Raises on any name that is not a preset, block, module or layer of this UNet, and on a preset
    that injects into the unconditional branch (use ``resolve_branches``).
    """
    branches = resolve_branches(modules, spec, scale)
    extra = [b for b in branches if b != "cond"]
    if extra:
        raise InstantStyleError(
            f"'{', '.join(n for n, _ in spec)}' injects into the {extra[0]} branch of classifier-free guidance, "
            "which only generation supports; use a preset without one (style, style+layout, strong, ...)"
        )
    return branches["cond"]


def resolve_branches(
    modules: list[AttentionModule],
    spec: list[tuple[str, float]],
    scale: float = 1.0,
    layout_boost: float | None = None,
) -> dict[str, dict[str, float]]:
    """Resolve a spec to ``{branch: {attn2 processor name: scale}}``.

    ``"cond"`` is always there (every processor, 0 where nothing covers it); ``"uncond"`` and
    ``"both"`` only when a preset in the spec uses them. Names other than presets act on the
    conditional branch. ``layout_boost`` multiplies the preset entries marked ``boost``; giving it
    for a spec without such an entry is an error (it would be ignored).
    """
    scale = _scale_value(scale, "scale")
    boost = 1.0 if layout_boost is None else _scale_value(layout_boost, "--layout-boost")
    by_module = {m.name: m for m in modules}
    by_block: dict[str, list[AttentionModule]] = {}
    for m in modules:
        by_block.setdefault(m.block, []).append(m)
    layer_owner = {m.layer_name(i): (m, i) for m in modules for i in range(m.layers)}

    # rank: 0 preset, 1 block, 2 module, 3 layer. value per (branch, processor) = highest rank wins.
    chosen: dict[tuple[str, str], tuple[int, float, str]] = {}

    def assign(branch: str, processor: str, rank: int, value: float, source: str) -> None:
        prev = chosen.get((branch, processor))
        if prev is not None and prev[0] == rank and prev[1] != value:
            raise InstantStyleError(
                f"--blocks: '{processor.rsplit('.attn2', 1)[0]}' gets two scales ({prev[1]} from "
                f"'{prev[2]}', {value} from '{source}'); give it once"
            )
        if prev is None or rank >= prev[0]:
            chosen[(branch, processor)] = (rank, value, source)

    table = presets(family_of(modules))
    boosted = False
    for name, value in spec:
        canonical = PRESET_ALIASES.get(name, name)
        if canonical in table:
            own: dict[tuple[str, str], float] = {}  # this preset's entries, later ones override
            for inj in table[canonical]:
                mods = []
                for target in inj.targets:
                    found = modules if target == ALL else by_block.get(target) or by_module.get(target)
                    if not found:
                        raise InstantStyleError(
                            f"preset '{canonical}' needs {target}, which this UNet does not have; "
                            f"use --blocks with one of: {', '.join(m.name for m in modules)}"
                        )
                    mods += found if isinstance(found, list) else [found]
                boosted |= inj.boost
                for m in mods:
                    for p in m.processors:
                        own[(inj.branch, p)] = value * inj.scale * (boost if inj.boost else 1.0)
            for (branch, p), v in own.items():
                assign(branch, p, 0, v, name)
        elif name in by_block:
            for m in by_block[name]:
                for p in m.processors:
                    assign("cond", p, 1, value, name)
        elif name in by_module:
            for p in by_module[name].processors:
                assign("cond", p, 2, value, name)
        elif name in layer_owner:
            m, i = layer_owner[name]
            proc = f"{name}.attn2.processor"
            if proc not in m.processors:
                raise InstantStyleError(f"--blocks: layer '{name}' has no cross-attention")
            assign("cond", proc, 3, value, name)
        else:
            raise InstantStyleError(_unknown_name_message(name, modules))
    if layout_boost is not None and not boosted:
        raise InstantStyleError(
            f"--layout-boost {layout_boost} has nothing to boost: '{', '.join(n for n, _ in spec)}' has no "
            "negative-branch layout block; use it with --mode precise"
        )

    procs = [p for m in modules for p in m.processors]
    out = {"cond": {p: (chosen[("cond", p)][1] * scale if ("cond", p) in chosen else 0.0) for p in procs}}
    for branch in BRANCHES[1:]:
        values = {p: chosen[(branch, p)][1] * scale if (branch, p) in chosen else 0.0 for p in procs}
        if any(values.values()):
            out[branch] = values
    return out


# has_boost and branches_of read the SDXL table: every family's presets have the same shapes
# (``_presets``), only their blocks differ.
def has_boost(spec: list[tuple[str, float]]) -> bool:
    """Whether a spec names a preset with a ``--layout-boost`` entry (``precise``)."""
    return any(i.boost for n, _ in spec for i in PRESETS.get(PRESET_ALIASES.get(n, n), ()))


def branches_of(spec: list[tuple[str, float]]) -> set[str]:
    """The CFG branches the presets named in a spec inject into (without resolving against a UNet)."""
    return {"cond"} | {
        i.branch for n, _ in spec for i in PRESETS.get(PRESET_ALIASES.get(n, n), ()) if i.scale
    }


def preset_table(family: str = "sdxl") -> dict[str, list[dict]]:
    """A family's presets as JSON-friendly rows (``instantstyle blocks --json``, the HTTP API)."""
    return {name: [i.as_dict() for i in injections] for name, injections in presets(family).items()}


def describe_preset(name: str, family: str = "sdxl") -> str:
    """One line for ``instantstyle blocks``: ``precise = up_blocks.0.attentions.1; ...``."""
    parts = []
    for i in presets(family)[name]:
        target = i.label
        if i.scale == 0:
            parts.append(f"not {target}")
            continue
        extra = [
            x
            for x in (
                f"x{i.scale:g}" if i.scale != 1 else "",
                f"{i.branch} branch" if i.branch != "cond" else "",
                "x --layout-boost" if i.boost else "",
            )
            if x
        ]
        parts.append(target + (f" ({', '.join(extra)})" if extra else ""))
    return f"{name} = {', '.join(parts)}"


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
        grid = (
            f"{sample_size // m.downsample}x{sample_size // m.downsample}"
            if sample_size
            else f"/{m.downsample}"
        )
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
    of SDXL and SD1.5 has one self-attention (``attn1``) next to its cross-attention (``attn2``).
    """
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise InstantStyleError(f"no attention layers given; use e.g. '{VSP_LAYERS[0]}' or '{ALL}' for all")
    spec = [("full" if n == ALL else n, 1.0) for n in names]
    scales = resolve(modules, spec)
    return [p.removesuffix(".attn2.processor") + ".attn1" for p, s in scales.items() if s]
