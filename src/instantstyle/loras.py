"""User LoRAs: ``--lora PATH[:SCALE]``, loaded once with diffusers' LoRA loaders, active for one call.

A request's ``loras`` entries are ``PATH[:SCALE]`` (scale 1.0 when left out): a local file
(``.safetensors``, or a diffusers ``.bin``), a Hub file ``owner/repo/file.safetensors`` (fetched
through ``download.resolve_file`` into the huggingface_hub cache), or a NAME the server offers
(``Loras.named``: ``instantstyle serve --lora-dir DIR``).

- **Formats.** Loading is diffusers' own ``pipe.load_lora_weights(state_dict, adapter_name=...)``
  on the PEFT backend: it reads the kohya-ss / A1111 layout (``lora_unet_*``, ``lora_te1_*``,
  ``lora_te2_*``, ``.alpha``) and the diffusers / PEFT layouts; no key is converted here.
- **Checks first.** Before anything loads, ``check_fits`` holds the file's tensors against the
  loaded model: every module it adapts must exist (UNet and text towers) with the shapes its
  factors imply. A LoRA for another family (an SD1.5 LoRA on SDXL: another cross-attention
  width, module names the UNet lacks, no second text tower) or a file that is no LoRA at all (a
  checkpoint, an IP-Adapter) is a one-line error that says what the file is for.
- **Scoped.** ``Loras.scope(entries)`` activates the request's adapters with
  ``pipe.set_adapters(names, weights)`` and switches every LoRA layer off again on exit, even on
  error, so a request without LoRAs runs on the base weights (same output as a fresh model).
- **Cached.** Adapters are named by the file's SHA-256 (computed once per path, size and mtime),
  so a LoRA already loaded is not loaded again; at most ``max_loaded`` stay, the least recently
  used is dropped with ``delete_adapters``.
- **Composes** with B-LoRA: ``also_active(unet, {"blora": scale})`` adds another PEFT adapter to
  the UNet's active set for the duration of a block (``methods.b_lora``).

Nothing here imports torch at import time (the request schema checks entries with ``check_entries``).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InstantStyleError

DEFAULT_SCALE = 1.0
SCALE_RANGE = (-10.0, 10.0)
MAX_LOADED = 8  # adapters kept loaded per model (least recently used dropped beyond)
WEIGHT_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")  # a diffusers LoRA folder
TOWERS = {"unet": "unet", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2"}
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
KOHYA_PREFIXES["lora_te_"] = "text_encoder"  # SD1.x/2.x LoRAs: one text tower
# Factor suffixes of the layouts diffusers reads: kohya, PEFT, diffusers' older attention-processor one.
DOWN = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight")
UP = (".lora_up.weight", ".lora_B.weight", ".lora.up.weight")
KNOWN_WIDTHS = {768: "Stable Diffusion 1.x", 1024: "Stable Diffusion 2.x", 2048: "SDXL"}


# ---------------------------------------------------------------------- request entries


def split_entry(entry: str) -> tuple[str, float | None]:
    """``"detail.safetensors:0.7"`` -> ``("detail.safetensors", 0.7)``; no ``:SCALE`` -> scale None.

    A colon starts a scale only when what follows it holds no path separator (so ``C:\\x`` is a
    path); a bad or out-of-range scale is a ``ValueError`` naming the entry.
    """
    head, sep, tail = entry.rpartition(":")
    if not sep or not head or any(c in tail for c in "/\\") or (len(head) == 1 and head.isalpha()):
        return entry, None
    try:
        scale = float(tail)
    except ValueError:
        raise ValueError(
            f"LoRA {entry!r}: SCALE {tail!r} is not a number; give PATH[:SCALE], e.g. detail.safetensors:0.7"
        ) from None
    lo, hi = SCALE_RANGE
    if not (math.isfinite(scale) and lo <= scale <= hi):
        raise ValueError(f"LoRA {entry!r}: SCALE must be a number in [{lo:g}, {hi:g}] (got {tail})")
    return head, scale


def join_entry(path: str, scale: float | None) -> str:
    return path if scale is None else f"{path}:{scale:g}"


def check_entries(entries: Sequence[str]) -> list[str]:
    """The schema's check of ``loras``: each ``PATH[:SCALE]`` well formed, no path given twice."""
    seen = set()
    for entry in entries:
        path, _ = split_entry(entry)
        if not path.strip():
            raise ValueError(f"LoRA {entry!r}: give PATH[:SCALE], e.g. detail.safetensors:0.7")
        if path in seen:
            raise ValueError(f"LoRA {path!r} is given twice; give it once, with the scale you want")
        seen.add(path)
    return list(entries)


# ---------------------------------------------------------------------- files


def resolve(spec: str) -> Path:
    """A LoRA reference -> a local file: a path (a diffusers LoRA folder: its weights file) or a Hub file."""
    from .download import resolve_file
    from .sources import parse_source

    try:
        src = parse_source(spec)
    except InstantStyleError:
        raise InstantStyleError(
            f"--lora '{spec}' is neither an existing file nor a Hub file 'owner/repo/file.safetensors'"
        ) from None
    if src.local is not None and src.local.is_dir():
        found = next((src.local / n for n in WEIGHT_FILES if (src.local / n).is_file()), None)
        if found is None:
            raise InstantStyleError(
                f"--lora '{spec}' is a folder without {' or '.join(WEIGHT_FILES)}; give the LoRA file itself"
            )
        return found
    return resolve_file(spec, "LoRA")


def read_state_dict(path: Path, spec: str) -> dict:
    """The file's tensors (safetensors, or a pickled diffusers ``.bin`` read with ``weights_only``)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and pickle errors share no base class
        raise InstantStyleError(
            f"--lora '{spec}' could not be read ({type(exc).__name__}); is it a complete .safetensors file?"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InstantStyleError(f"--lora '{spec}' holds no flat dict of tensors; it is not a LoRA file")
    return data


def precheck(entries: Sequence[str], named: Sequence[str] = ()) -> None:
    """What needs no model, for front ends to check before one loads: each entry's file exists (or
    is in the Hub cache: else the error names the fetch command) and holds a LoRA."""
    from .single_file import read_keys

    for entry in entries:
        spec, _ = split_entry(entry)
        if spec in named:
            continue
        path = resolve(spec)
        keys = (
            read_keys(path) if path.suffix in (".safetensors", ".ckpt") else list(read_state_dict(path, spec))
        )
        if not is_lora(keys):
            raise _not_a_lora(keys, spec)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- does it fit this model?


def is_lora(keys) -> bool:
    return any(k.endswith(DOWN + UP) for k in keys)


def _not_a_lora(keys: list[str], spec: str) -> InstantStyleError:
    from . import single_file

    if any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys):
        return InstantStyleError(f"--lora '{spec}' is an IP-Adapter, not a LoRA; pass it with --adapter")
    if any(".hada_w1_a" in k or ".lokr_w1" in k for k in keys):
        return InstantStyleError(
            f"--lora '{spec}' is a LyCORIS LoHa/LoKr file, which diffusers' LoRA loader does not read; "
            "use a LoRA (kohya, A1111 or diffusers format)"
        )
    family = single_file.family_of_keys(keys)
    hint = {"vae": "; pass it with --vae"}.get(family, "; a checkpoint goes to --base")
    what = single_file.FAMILY_NAMES.get(family, "not a LoRA")
    return InstantStyleError(f"--lora '{spec}' is {what}, not a LoRA{hint}")


def _module_table(pipe) -> dict[str, tuple[int, int]]:
    """Every adaptable layer of ``pipe`` -> (in, out) width, under each name a LoRA file may use it by:
    PEFT's ``unet.<module>`` / ``text_encoder[_2].<module>`` and kohya's ``lora_unet_<LDM name>`` /
    ``lora_te1_`` / ``lora_te2_`` (dots as underscores). Layers already wrapped by a LoRA count as
    their base layer."""
    import torch

    from .sources.ldm_layout import unet_prefixes

    table: dict[str, tuple[int, int]] = {}
    prefixes = sorted(unet_prefixes(pipe.unet.config).items(), key=lambda kv: -len(kv[0]))
    for component in TOWERS:
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for name, module in model.named_modules():
            if ".lora_" in name or "base_layer" in name or ".lora_magnitude_vector" in name:
                continue
            base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
            if isinstance(base, torch.nn.Linear):
                widths = (base.in_features, base.out_features)
            elif isinstance(base, torch.nn.Conv2d):
                widths = (base.in_channels, base.out_channels)
            else:
                continue
            if component == "unet":
                table[f"unet.{name}"] = widths
                table["lora_unet_" + name.replace(".", "_")] = widths  # kohya's SD1.x names
                ldm = next((ldm + name[len(hf) :] for hf, ldm in prefixes if name.startswith(hf + ".")), None)
                if ldm is not None:
                    table["lora_unet_" + ldm.replace(".", "_")] = widths
            else:
                plain = name.removeprefix("text_model.")
                table[f"{component}.{plain}"] = widths
                kohya = "lora_te1_" if component == "text_encoder" else "lora_te2_"
                table[kohya + f"text_model.{plain}".replace(".", "_")] = widths
                if component == "text_encoder":
                    table["lora_te_" + f"text_model.{plain}".replace(".", "_")] = widths
    return table


def _lora_modules(state_dict: dict) -> dict[str, tuple[int, int]]:
    """The LoRA's adapted layers, named as ``_module_table`` names them -> (in, out) from its factors."""
    downs, ups = {}, {}
    for key, value in state_dict.items():
        for suffixes, table in ((DOWN, downs), (UP, ups)):
            suffix = next((s for s in suffixes if key.endswith(s)), None)
            if suffix is not None:
                table[_normalise(key[: -len(suffix)])] = value
    return {
        name: (int(down.shape[1]), int(ups[name].shape[0]) if name in ups else -1)
        for name, down in downs.items()
        if down.ndim >= 2
    }


def _normalise(stem: str) -> str:
    """A factor's module name as ``_module_table`` spells it (prefixes, ``text_model.``, old processor names)."""
    if stem.startswith(tuple(KOHYA_PREFIXES)):
        return stem
    head, _, rest = stem.partition(".")
    if head not in TOWERS:  # a PEFT UNet file saved without its prefix
        head, rest = "unet", stem
    rest = rest.removeprefix("text_model.")
    for old, new in (("processor.to_out_lora", "to_out.0"), ("processor.to_", "to_")):
        rest = rest.replace(old, new)
    return f"{head}.{rest.removesuffix('_lora')}"


def _cross_width(modules: dict[str, tuple[int, int]]) -> int | None:
    """The text width the LoRA's cross-attention keys take (768 SD1.x, 1024 SD2.x, 2048 SDXL)."""
    for name, (width, _) in modules.items():
        if name.endswith(("attn2.to_k", "attn2_to_k", "attn2.to_v", "attn2_to_v")):
            return width
    return None


def base_family(pipe) -> str:
    from . import blocks

    family = getattr(blocks, "family", None)
    if family is not None:
        return {"sdxl": "SDXL", "sd15": "Stable Diffusion 1.x"}.get(family(pipe.unet), str(family(pipe.unet)))
    return "SDXL" if getattr(pipe, "text_encoder_2", None) is not None else "Stable Diffusion 1.x"


def check_fits(state_dict: dict, pipe, spec: str) -> None:
    """A one-line error, before anything loads, unless ``state_dict`` is a LoRA for ``pipe``'s model:
    every layer it adapts exists in the UNet or a text tower, with the widths its factors imply."""
    keys = list(state_dict)
    if not is_lora(keys):
        raise _not_a_lora(keys, spec)
    table = _module_table(pipe)
    modules = _lora_modules(state_dict)
    missing = [n for n in modules if n not in table]
    wrong = [
        n for n, (i, o) in modules.items() if n in table and (i, o if o >= 0 else table[n][1]) != table[n]
    ]
    if not missing and not wrong:
        return
    cross, base_cross = _cross_width(modules), pipe.unet.config.cross_attention_dim
    first = any(n.startswith(("lora_te_", "lora_te1_", "text_encoder.")) for n in modules)
    second = any(n.startswith(("lora_te2_", "text_encoder_2.")) for n in modules)
    one_tower = first and not second
    family = KNOWN_WIDTHS.get(cross or 0) or (
        "a model with one text encoder (Stable Diffusion 1.x/2.x)"
        if one_tower
        else "a model with two text encoders (SDXL)"
        if second
        else "another model"
    )
    facts = []
    if cross is not None and cross != base_cross:
        facts.append(f"its cross-attention takes {cross}-wide text features, this base's {base_cross}")
    if missing:
        facts.append(f"{len(missing)} of its {len(modules)} layers are not in this base (e.g. {missing[0]})")
    elif wrong:
        facts.append(f"{len(wrong)} layers have other widths (e.g. {wrong[0]})")
    if one_tower and getattr(pipe, "text_encoder_2", None) is not None:
        facts.append("it adapts one text encoder, this base has two")
    if second and getattr(pipe, "text_encoder_2", None) is None:
        facts.append("it adapts a second text encoder, this base has one")
    raise InstantStyleError(
        f"--lora '{spec}' is a LoRA for {family}, not for this {base_family(pipe)} base ({'; '.join(facts)}); "
        "use a LoRA made for this base's family"
    )


# ---------------------------------------------------------------------- loaded adapters and the scope


@dataclass(frozen=True)
class LoraFile:
    id: str  # what outputs record: the server's name, the Hub reference or the absolute path
    path: Path
    sha256: str

    @property
    def adapter(self) -> str:
        return f"lora_{self.sha256[:16]}"


@dataclass(frozen=True)
class ActiveLora:
    file: LoraFile
    scale: float

    def record(self) -> dict:
        return {"id": self.file.id, "sha256": self.file.sha256, "scale": self.scale}


class Loras:
    """The user LoRAs of one loaded model: loaded on first use, kept by content, active per call."""

    def __init__(self, pipe, max_loaded: int = MAX_LOADED):
        self.pipe = pipe
        self.max_loaded = max_loaded
        self.named: dict[str, Path] = {}  # NAME -> file, offered by a server (``serve --lora-dir``)
        self.loaded: OrderedDict[str, LoraFile] = OrderedDict()  # adapter name -> file, oldest first
        self.active: tuple[ActiveLora, ...] = ()  # of the call in flight
        self.loads = 0  # files loaded (for tests: a cached LoRA is not loaded again)
        self._hashes: dict[tuple, str] = {}
        self._hub: dict[str, Path] = {}  # Hub reference -> its file in the Hub cache

    def names(self) -> list[str]:
        return sorted(self.named)

    def offer(self, named: dict[str, str | Path]) -> None:
        """Make files available by NAME (a server's ``--lora-dir``), each checked against the model now."""
        for name, spec in named.items():
            path = resolve(str(spec))
            check_fits(read_state_dict(path, name), self.pipe, name)
            self.named[name] = path

    def file(self, spec: str) -> LoraFile:
        """The file an entry's PATH (or a server NAME) means, with its SHA-256 (once per path, size, mtime)."""
        from .sources import canonical_id, parse_source

        if spec in self.named:
            path, ident = self.named[spec], spec
        else:  # a Hub file is looked up once per model, not once per request
            path = self._hub.get(spec) or resolve(spec)
            ident = canonical_id(spec)
            if parse_source(spec).repo_id is not None:
                self._hub[spec] = path
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = sha256_of(path)
        return LoraFile(ident, path, self._hashes[key])

    def prepare(self, entries: Sequence[str]) -> tuple[ActiveLora, ...]:
        """Resolve, check and load (if not cached) every entry; nothing is activated."""
        wanted = []
        for entry in entries:
            spec, scale = split_entry(entry)
            wanted.append(ActiveLora(self.file(spec), DEFAULT_SCALE if scale is None else scale))
        if len(wanted) > self.max_loaded:
            raise InstantStyleError(f"{len(wanted)} LoRAs in one request; at most {self.max_loaded}")
        shas = [a.file.sha256 for a in wanted]
        twice = next((a for a in wanted if shas.count(a.file.sha256) > 1), None)
        if twice is not None:
            raise InstantStyleError(f"--lora '{twice.file.id}' is given twice (same file); give it once")
        keep = {a.file.adapter for a in wanted}
        for item in wanted:
            self._load(item.file, keep)
        self._evict(keep, self.max_loaded)
        return tuple(wanted)

    def _evict(self, keep: set[str], room: int) -> None:
        """Unload the least recently used adapters (never those in ``keep``) until at most ``room`` stay."""
        for old in [a for a in self.loaded if a not in keep][: max(0, len(self.loaded) - room)]:
            with warnings.catch_warnings():  # peft: "was active, now deleted": the next scope sets them
                warnings.simplefilter("ignore", UserWarning)
                self.pipe.delete_adapters(old)
            del self.loaded[old]

    def _load(self, file: LoraFile, keep: set[str]) -> None:
        if file.adapter in self.loaded:
            self.loaded.move_to_end(file.adapter)
            return
        state_dict = read_state_dict(file.path, file.id)
        check_fits(state_dict, self.pipe, file.id)
        self._evict(keep, self.max_loaded - 1)  # room for this one first: memory stays bounded
        try:
            with _quiet_loaders():
                self.pipe.load_lora_weights(state_dict, adapter_name=file.adapter)
        except (ValueError, RuntimeError, KeyError) as exc:
            with contextlib.suppress(Exception):
                self.pipe.delete_adapters(file.adapter)
            raise InstantStyleError(
                f"--lora '{file.id}' could not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
            ) from None
        self.loads += 1
        self.loaded[file.adapter] = file

    @contextlib.contextmanager
    def scope(self, entries: Sequence[str]) -> Iterator[tuple[ActiveLora, ...]]:
        """The entries' LoRAs active (at their scales) for the block; every LoRA layer off afterwards."""
        active = self.prepare(entries) if entries else ()
        try:
            if active:
                self.pipe.set_adapters([a.file.adapter for a in active], [a.scale for a in active])
            _enable(self.pipe, bool(active))
            self.active = active
            _record(self.pipe.unet, active)
            yield active
        finally:
            self.active = ()
            _record(self.pipe.unet, ())
            _enable(self.pipe, False)

    def records(self) -> list[dict]:
        """What the call in flight uses: ``[{"id", "sha256", "scale"}]`` (outputs' ``lora_files``)."""
        return [a.record() for a in self.active]


_ACTIVE_ATTR = "_instantstyle_active_loras"


def _record(unet, active: tuple[ActiveLora, ...]) -> None:
    unet.__dict__[_ACTIVE_ATTR] = tuple((a.file.adapter, a.scale) for a in active)


def _enable(pipe, on: bool) -> None:
    """Switch every LoRA layer of the UNet and text towers on or off (diffusers' ``set_adapter_layers``)."""
    from diffusers.utils.peft_utils import set_adapter_layers

    for component in TOWERS:
        model = getattr(pipe, component, None)
        if model is not None and getattr(model, "peft_config", None):
            set_adapter_layers(model, enabled=on)


@contextlib.contextmanager
def also_active(unet, extra: dict[str, float]) -> Iterator[None]:
    """Add PEFT adapters ``extra`` (name -> weight) to the UNet's active user LoRAs for the block
    (B-LoRA's adapter next to the request's LoRAs); the previous active set is restored on exit."""
    from diffusers.utils.peft_utils import set_adapter_layers

    before = unet.__dict__.get(_ACTIVE_ATTR, ())
    names = [n for n, _ in before] + list(extra)
    unet.set_adapters(names, [w for _, w in before] + list(extra.values()))
    set_adapter_layers(unet, enabled=True)
    try:
        yield
    finally:
        if before:
            unet.set_adapters([n for n, _ in before], [w for _, w in before])
        else:
            set_adapter_layers(unet, enabled=False)


@contextlib.contextmanager
def _quiet_loaders() -> Iterator[None]:
    """diffusers' and transformers' load-time chatter (progress bars, "no LoRA keys for the text
    encoder", load reports) off while a LoRA loads: ``check_fits`` has already said what matters."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # peft: "multiple adapters in the model", which is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        if bars:
            tlog.enable_progress_bar()


def graph_key(model) -> tuple:
    """What a captured CUDA graph bakes in of the LoRA layers in ``model``: per layer, its active
    adapters, their scalings and whether LoRA is switched off (all Python state, read at capture)."""
    key = []
    for module in model.modules():
        active = getattr(module, "active_adapters", None)
        scaling = getattr(module, "scaling", None)
        if active is None or not isinstance(scaling, dict):
            continue
        merged = tuple(getattr(module, "merged_adapters", ()) or ())
        if getattr(module, "disable_adapters", False):  # off: which adapters and scales is moot
            key.append((id(module), "off", merged))
        else:
            key.append((id(module), tuple((a, scaling.get(a)) for a in active), merged))
    return tuple(key)
