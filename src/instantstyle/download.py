"""Fetch exactly the weights a set of features needs: ``instantstyle download [FEATURE|REF ...]``.

A *feature* is a named row of ``FEATURES``: the Hub pieces (repository + the files in it) that a
command needs, e.g. ``base`` (SDXL in fp16), ``adapter`` (h94's ``ip-adapter_sdxl`` and its
ViT-bigG image encoder), ``canny``/``tile``/``depth`` (ControlNets), ``vit-h`` (the ViT-H adapter
pair), ``sd15``/``sd15-adapter``/``sd15-plus``/``vit-h-text`` (SD1.5, ``ip-adapter_sd15``,
``ip-adapter-plus_sd15``, the ViT-H text tower). The table is data: other modules add rows with
``register_feature`` (metric models, more adapters). Anything else given is a model reference as ``instantstyle.models`` reads it
(``owner/repo`` or ``owner/repo/path/in/repo``), so the pre-flight's "fetch them with" line can
name non-default models too.

Downloads go through huggingface_hub's ``snapshot_download`` with explicit ``allow_patterns``:
the shared Hugging Face cache (``HF_HOME``), its progress bars, and its resumable downloads
(an interrupted file continues from its ``.incomplete`` part on the next run).

``--dry-run`` never touches the network: each feature row declares its files by name (the
files of the repositories at the time of writing, the same names the loaders ask for), so the
plan is the declared list, marked with what the local cache already holds
(``try_to_load_from_cache``, which only reads the disk). A reference outside the table has no
declared list; its dry run shows the patterns that would be fetched.
"""

from __future__ import annotations

import fnmatch
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import sources
from .errors import InstantStyleError, ModelNotFoundError

SDXL_BASE_REPO = sources.DEFAULT_BASE
IP_ADAPTER_REPO = "h94/IP-Adapter"
DEPTH_CONTROLNET = "diffusers/controlnet-depth-sdxl-1.0"


@dataclass(frozen=True)
class Piece:
    """One repository and the files of it that a feature needs."""

    what: str  # e.g. "SDXL base (fp16)"
    repo_id: str
    files: tuple[str, ...] = ()  # declared file names (exact paths in the repository)
    patterns: tuple[str, ...] = ()  # glob patterns, for references outside the table
    approx_gb: float | None = None
    whole_repo: bool = False  # the files are the repository's model (a bare 'owner/repo' means this piece)

    @property
    def allow_patterns(self) -> list[str]:
        return list(self.files or self.patterns)

    def hf_command(self) -> str:
        """The equivalent ``hf download`` line (huggingface_hub >= 1: explicit file names are positional)."""
        if self.files:
            return "hf download " + " ".join(shlex.quote(x) for x in (self.repo_id, *self.files))
        return (
            "hf download "
            + shlex.quote(self.repo_id)
            + "".join(f" --include {shlex.quote(p)}" for p in self.patterns)
        )


@dataclass(frozen=True)
class Feature:
    name: str
    summary: str  # what it is for (shown by --help and --list)
    pieces: tuple[Piece, ...] = field(default_factory=tuple)


def _diffusers_component(folder: str, weights: str, variant: str | None = "fp16") -> tuple[str, ...]:
    stem, ext = weights.rsplit(".", 1)
    name = f"{stem}.{variant}.{ext}" if variant else weights
    return (f"{folder}/config.json", f"{folder}/{name}")


_TOKENIZER = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")

SDXL_BASE_FP16 = Piece(
    "SDXL base (fp16)",
    SDXL_BASE_REPO,
    files=(
        "model_index.json",
        "scheduler/scheduler_config.json",
        *_diffusers_component("text_encoder", "model.safetensors"),
        *_diffusers_component("text_encoder_2", "model.safetensors"),
        *(f"tokenizer/{f}" for f in _TOKENIZER),
        *(f"tokenizer_2/{f}" for f in _TOKENIZER),
        *_diffusers_component("unet", "diffusion_pytorch_model.safetensors"),
        *_diffusers_component("vae", "diffusion_pytorch_model.safetensors"),
    ),
    approx_gb=6.9,
    whole_repo=True,
)
IP_ADAPTER_SDXL = Piece(
    "IP-Adapter ip-adapter_sdxl + ViT-bigG image encoder",
    IP_ADAPTER_REPO,
    files=(
        "sdxl_models/ip-adapter_sdxl.safetensors",
        "sdxl_models/image_encoder/config.json",
        "sdxl_models/image_encoder/model.safetensors",
    ),
    approx_gb=4.3,
)
IP_ADAPTER_VIT_H = Piece(
    "IP-Adapter ViT-H pair (ip-adapter_sdxl_vit-h, ip-adapter-plus_sdxl_vit-h) + ViT-H image encoder",
    IP_ADAPTER_REPO,
    files=(
        "sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
        "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
    ),
    approx_gb=3.5,
)

# SD1.5 (docs/families.md): the base in fp16 without its safety checker (not loaded), h94's
# ip-adapter_sd15 with the ViT-H image encoder, and the ViT-H text tower for content subtraction.
SD15_BASE_FP16 = Piece(
    "SD1.5 base (fp16)",
    sources.SD15_BASE,
    files=(
        "model_index.json",
        "scheduler/scheduler_config.json",
        *_diffusers_component("text_encoder", "model.safetensors"),
        *(f"tokenizer/{f}" for f in _TOKENIZER),
        *_diffusers_component("unet", "diffusion_pytorch_model.safetensors"),
        *_diffusers_component("vae", "diffusion_pytorch_model.safetensors"),
    ),
    approx_gb=2.0,
    whole_repo=True,
)
SD15_BASE_CONFIGS = Piece(
    "SD1.5 base configs and tokenizer (no weights; SD1.5 single-file bases take their configs from here)",
    sources.SD15_BASE,
    files=tuple(f for f in SD15_BASE_FP16.files if not f.endswith(".safetensors")),
    approx_gb=0.01,
)
IP_ADAPTER_SD15 = Piece(
    "IP-Adapter ip-adapter_sd15 + ViT-H image encoder",
    IP_ADAPTER_REPO,
    files=(
        "models/ip-adapter_sd15.safetensors",
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
    ),
    approx_gb=2.6,
)
IP_ADAPTER_SD15_PLUS = Piece(
    "IP-Adapter ip-adapter-plus_sd15 (Resampler over ViT-H patch features) + ViT-H image encoder",
    IP_ADAPTER_REPO,
    files=(
        "models/ip-adapter-plus_sd15.safetensors",
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
    ),
    approx_gb=2.6,
)
VIT_H_TEXT = Piece(
    "CLIP ViT-H/14 (its text tower: content subtraction for ViT-H adapters)",
    sources.VIT_H_TEXT,
    files=("config.json", "model.safetensors", *_TOKENIZER),
    approx_gb=3.9,
    whole_repo=True,
)

SDXL_BASE_CONFIGS = Piece(
    "SDXL base configs and tokenizers (no weights; single-file bases take their configs from here)",
    SDXL_BASE_REPO,
    files=tuple(f for f in SDXL_BASE_FP16.files if not f.endswith(".safetensors")),
    approx_gb=0.01,
)
# The metric models (instantstyle.metrics: CSD, CLIP-T, DINOv2), as their loaders ask for them.
METRIC_PIECES = (
    Piece(
        "CSD style/content model (ViT-L)",
        "tomg-group-umd/CSD-ViT-L",
        files=("pytorch_model.bin",),
        approx_gb=2.4,
    ),
    Piece(
        "CLIP ViT-L/14 (CLIP-T text alignment)",
        "openai/clip-vit-large-patch14",
        files=(
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
            "merges.txt",
            "vocab.json",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "tokenizer.json",
        ),
        approx_gb=1.7,
        whole_repo=True,
    ),
    Piece(
        "DINOv2 base (content leakage)",
        "facebook/dinov2-base",
        files=("config.json", "model.safetensors", "preprocessor_config.json"),
        approx_gb=0.35,
        whole_repo=True,
    ),
)


def _controlnet(what: str, repo_id: str, gb: float) -> Piece:
    # The loader asks for the plain (fp32) weights: ControlNetModel.from_pretrained without a variant.
    return Piece(
        what,
        repo_id,
        files=("config.json", "diffusion_pytorch_model.safetensors"),
        approx_gb=gb,
        whole_repo=True,
    )


FEATURES: dict[str, Feature] = {}


def register_feature(feature: Feature) -> Feature:
    """Add a row to the table (e.g. metric models); a name already taken is an error."""
    if feature.name in FEATURES:
        raise InstantStyleError(f"download feature {feature.name!r} is already registered")
    FEATURES[feature.name] = feature
    return feature


def _default_features() -> None:
    register_feature(Feature("base", "SDXL base in fp16: every command", (SDXL_BASE_FP16,)))
    register_feature(
        Feature(
            "adapter",
            "the IP-Adapter and its image encoder: generate, stylize, compare, style save, serve",
            (IP_ADAPTER_SDXL,),
        )
    )
    register_feature(
        Feature(
            "canny",
            "Canny ControlNet: --control canny",
            (_controlnet("Canny ControlNet", sources.DEFAULT_CONTROLNET_CANNY, 5.0),),
        )
    )
    register_feature(
        Feature(
            "tile",
            "tile ControlNet: --control tile and stylize (InstantStyle-Plus)",
            (_controlnet("tile ControlNet", sources.DEFAULT_CONTROLNET_TILE, 5.0),),
        )
    )
    register_feature(
        Feature(
            "depth",
            "depth ControlNet: --control diffusers/controlnet-depth-sdxl-1.0 --control-image DEPTH.png",
            (_controlnet("depth ControlNet", DEPTH_CONTROLNET, 5.0),),
        )
    )
    register_feature(
        Feature(
            "base-config",
            "SDXL base's configs and tokenizers only: --base FILE.safetensors (single-file finetunes)",
            (SDXL_BASE_CONFIGS,),
        )
    )
    register_feature(
        Feature(
            "metrics",
            "the metric models (CSD, CLIP ViT-L/14, DINOv2): eval, compare --metrics, probe-blocks",
            METRIC_PIECES,
        )
    )
    register_feature(Feature("sd15", "SD1.5 base in fp16: --base " + sources.SD15_BASE, (SD15_BASE_FP16,)))
    register_feature(
        Feature(
            "sd15-adapter",
            "ip-adapter_sd15 and its ViT-H image encoder: the SD1.5 defaults",
            (IP_ADAPTER_SD15,),
        )
    )
    register_feature(
        Feature(
            "sd15-plus",
            "IP-Adapter Plus for SD1.5 (ip-adapter-plus_sd15) and its ViT-H image encoder",
            (IP_ADAPTER_SD15_PLUS,),
        )
    )
    register_feature(
        Feature(
            "vit-h-text",
            "the ViT-H text tower: --content-prompt on SD1.5 (and --content-text-encoder for ViT-H adapters)",
            (VIT_H_TEXT,),
        )
    )
    register_feature(
        Feature(
            "sd15-config",
            "SD1.5 base's configs and tokenizer only: --base FILE.safetensors (SD1.5 single files)",
            (SD15_BASE_CONFIGS,),
        )
    )
    register_feature(
        Feature(
            "sd15-canny",
            "SD1.5 Canny ControlNet: --control canny on an SD1.5 base",
            (_controlnet("SD1.5 Canny ControlNet", sources.SD15_CONTROLNET_CANNY, 1.4),),
        )
    )
    register_feature(
        Feature(
            "sd15-tile",
            "SD1.5 tile ControlNet: --control tile on an SD1.5 base",
            (_controlnet("SD1.5 tile ControlNet", sources.SD15_CONTROLNET_TILE, 1.4),),
        )
    )
    register_feature(
        Feature(
            "vit-h",
            "the ViT-H IP-Adapters (sdxl_models/*vit-h*) and their image encoder (models/image_encoder)",
            (IP_ADAPTER_VIT_H,),
        )
    )


DEFAULT_FEATURES = ("base", "adapter")
_default_features()


# ---------------------------------------------------------------------- references -> pieces


def piece_for_reference(ref: str, variant: str | None = None) -> Piece:
    """A Hub reference outside the table: a file, a folder, or a whole diffusers repository."""
    src = sources.parse_source(ref)
    if src.repo_id is None:
        raise InstantStyleError(
            f"'{ref}' is a local path; only Hub references ('owner/repo[/path]') are downloaded"
        )
    known = feature_piece_with_file(src.repo_id, src.subpath)
    if known is not None:
        return known
    if src.subpath:
        sub = src.subpath.rstrip("/")
        leaf = sub.rsplit("/", 1)[-1]
        if "." in leaf:  # a file
            return Piece("Hub file", src.repo_id, files=(sub,))
        return Piece("Hub folder", src.repo_id, patterns=(f"{sub}/*",))
    weights = (
        "*.fp16.safetensors"
        if variant == "fp16"
        else f"*.{variant}.safetensors"
        if variant
        else "*.safetensors"
    )
    return Piece("Hub repository", src.repo_id, patterns=("*.json", "*.txt", weights))


def feature_piece_with_file(repo_id: str, subpath: str | None) -> Piece | None:
    """The table's piece that holds this reference (a default model named explicitly)."""
    for feature in FEATURES.values():
        for piece in feature.pieces:
            if piece.repo_id != repo_id:
                continue
            if not subpath:
                if piece.whole_repo:
                    return piece
                continue
            sub = subpath.rstrip("/")
            if any(f == sub or f.startswith(sub + "/") for f in piece.files):
                return piece
    return None


def feature_for_reference(ref: str) -> str | None:
    """The feature name whose row holds ``ref`` (so messages can say ``instantstyle download NAME``)."""
    try:
        src = sources.parse_source(ref)
    except InstantStyleError:
        return None
    if src.repo_id is None:
        return None
    piece = feature_piece_with_file(src.repo_id, src.subpath)
    for feature in FEATURES.values():
        if piece is not None and piece in feature.pieces:
            return feature.name
    return None


def plan(items: list[str] | tuple[str, ...] = DEFAULT_FEATURES, variant: str | None = None) -> list[Piece]:
    """The pieces that ``items`` (feature names and/or Hub references) need, without duplicates."""
    pieces: list[Piece] = []
    for item in items:
        if item in FEATURES:
            new = list(FEATURES[item].pieces)
        elif "/" in item:
            new = [piece_for_reference(item, variant)]
        else:
            raise InstantStyleError(
                f"unknown download feature {item!r}{_did_you_mean(item, FEATURES)}; "
                f"choose from {', '.join(FEATURES)} or give a Hub reference 'owner/repo[/path]'"
            )
        pieces += [p for p in new if p not in pieces]
    return pieces


def _did_you_mean(word: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def command_for(items: list[str]) -> str:
    """The one command that fetches ``items`` (feature names or references), deduplicated."""
    seen = list(dict.fromkeys(items))
    return "instantstyle download " + " ".join(shlex.quote(x) for x in seen)


# ---------------------------------------------------------------------- cache and fetching


def cached_file(repo_id: str, filename: str) -> str | None:
    """Path of ``filename`` in the local Hub cache, or None (reads the disk only)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return found if isinstance(found, str) else None


def cached_matching(repo_id: str, patterns: list[str]) -> list[str]:
    """Files of the cached snapshot(s) of ``repo_id`` matching ``patterns`` (disk only)."""
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir()
    except Exception:  # no cache yet, or an unreadable one: nothing is cached
        return []
    names: set[str] = set()
    for repo in info.repos:
        if repo.repo_id == repo_id and repo.repo_type == "model":
            for rev in repo.revisions:
                for f in rev.files:
                    rel = f.file_path.relative_to(rev.snapshot_path).as_posix()
                    if any(fnmatch.fnmatch(rel, p) for p in patterns):
                        names.add(rel)
    return sorted(names)


def describe(pieces: list[Piece]) -> list[str]:
    """The dry run: one header per piece, then one line per file (``cached`` / ``to fetch``)."""
    lines = []
    total = 0.0
    for piece in pieces:
        size = f", about {piece.approx_gb:g} GB" if piece.approx_gb else ""
        lines.append(f"{piece.what}: {piece.repo_id}{size}")
        if piece.files:
            for name in piece.files:
                state = "cached  " if cached_file(piece.repo_id, name) else "to fetch"
                lines.append(f"  {state}  {piece.repo_id}/{name}")
        else:
            have = cached_matching(piece.repo_id, list(piece.patterns))
            lines.append(
                f"  patterns {' '.join(piece.patterns)} ({len(have)} matching files cached; "
                "the full list is known only to the Hub)"
            )
        lines.append(f"  same as: {piece.hf_command()}")
        total += piece.approx_gb or 0.0
    if total:
        lines.append(f"about {total:g} GB in all (files already cached are not fetched again)")
    return lines


def fetch(pieces: list[Piece], *, progress: bool = True, log: Callable[[str], None] = print) -> list[str]:
    """Download every piece into the Hub cache (resumable, with huggingface_hub's progress bars)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    if sources.offline():
        raise InstantStyleError(
            "HF_HUB_OFFLINE=1 is set, so nothing can be downloaded; unset it (or see the plan with --dry-run)"
        )
    if not progress:
        disable_progress_bars()
    paths = []
    for piece in pieces:
        log(f"fetching {piece.what} from {piece.repo_id}")
        try:
            paths.append(snapshot_download(piece.repo_id, allow_patterns=piece.allow_patterns))
        except Exception as exc:  # the Hub's errors are many; each becomes one line
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise InstantStyleError(
                f"could not fetch {piece.repo_id} ({type(exc).__name__}: {first}); "
                "run the same command again to resume"
            ) from None
    return paths


# ---------------------------------------------------------------------- reachability

_REACHABLE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the Hub endpoint's host (``HF_ENDPOINT``); cached for the process."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if sources.offline():
        return False
    endpoint = constants.ENDPOINT
    if endpoint in _REACHABLE:
        return _REACHABLE[endpoint]
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            ok = True
    except OSError:  # DNS failure, refused, unreachable, timeout
        ok = False
    _REACHABLE[endpoint] = ok
    return ok


# ---------------------------------------------------------------------- what is missing, and how to fetch it


def fetch_command(src: sources.Source) -> str:
    """``instantstyle download NAME`` for a model of the download table, else ``... REF``."""
    if src.repo_id is None:
        return ""
    return command_for([feature_for_reference(src.spec) or src.spec])


def missing(what: str, src: sources.Source, detail: str = "") -> ModelNotFoundError:
    if src.local is not None:
        return ModelNotFoundError(f"{what} '{src.spec}' does not exist{detail}; check the path")
    how = (
        "is not in the Hugging Face cache and HF_HUB_OFFLINE=1 is set"
        if sources.offline()
        else "could not be fetched"
    )
    return ModelNotFoundError(f"{what} '{src.spec}' {how}{detail}; fetch it with: {fetch_command(src)}")


def resolve_file(spec: str, what: str) -> Path:
    """A local path to a single file (downloaded into the Hub cache if needed)."""
    src = sources.parse_source(spec)
    if src.local is not None:
        if not src.local.is_file():
            raise missing(what, src)
        return src.local
    if not src.subpath:
        raise InstantStyleError(
            f"{what} '{spec}' names a repository, not a file; use 'owner/repo/path/to/file'"
        )
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(src.repo_id, src.subpath))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise missing(what, src, f" ({type(exc).__name__})") from None
