"""Style embeddings: encoding with a cache, combining references, content subtraction, style files.

The maths is in pure tensor functions (``combine_styles``, ``subtract_content``,
``with_unconditional``) tested on hand-made tensors. Content subtraction follows InstantStyle
(arXiv 2404.02733, Sec. 3.2): in the joint CLIP space, before the IP-Adapter's image projection,
``style = image_embeds - scale * text_embeds(content_prompt)``, on the conditional branch only.

Two kinds of features (``FEATURES``), chosen by the adapter (``adapter.AdapterInfo.features``):
``global``, the encoder's projected embedding ``[D]`` (ip-adapter_sdxl, ip-adapter_sdxl_vit-h), and
``patch``, its penultimate hidden states ``[L, H]`` (IP-Adapter Plus; ``[257, 1280]`` for ViT-H/14 at
224 px), exactly what diffusers' ``encode_image(output_hidden_states=True)`` feeds the Resampler.
Every function below takes per-image features ``[N, *F]`` with ``F = (D,)`` or ``(L, H)``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InstantStyleError
from .files import (
    atomic_write,
    cache_dir,  # noqa: F401  (re-exported: where the style cache lives)
)

COMBINE_MODES = ("mean", "concat")
FEATURES = ("global", "patch")  # the projected image embedding, or the penultimate hidden states
# Why content subtraction refuses patch features (InstantStyle's README: subtraction works on CLIP's
# global image embedding, in the space its text embedding shares; patch features are not there).
PATCH_SUBTRACTION = (
    "content subtraction (--content-prompt) does not apply to an IP-Adapter Plus: its patch features "
    "are not in the CLIP text space the content prompt is embedded in (the InstantStyle README says so); "
    "use a global adapter (h94/IP-Adapter sdxl_models/ip-adapter_sdxl.safetensors; on SD1.5 "
    "models/ip-adapter_sd15.safetensors), or drop "
    "--content-prompt and pass --negative-style with an image of the content to keep out"
)
STYLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# ---------------------------------------------------------------- pure maths


def combine_styles(
    embeds: torch.Tensor, weights: Sequence[float] | None = None, mode: str = "mean"
) -> torch.Tensor:
    """Combine per-image features ``[N, *F]`` into the adapter's image set ``[M, *F]``.

    - ``mean``: weighted mean in CLIP space, ``M = 1`` (weights need not sum to 1); on patch
      features ``[N, L, H]`` it is the mean position by position (patch ``l`` of every image), before
      the Resampler, as ComfyUI_IPAdapter_plus's ``average``;
    - ``concat``: keep one set of tokens per image, ``M = N`` (diffusers' multi-image behaviour: the
      adapter's tokens of every image side by side, 4 or 16 each);
      per-image weights cannot be expressed there, so they must be all equal.
    """
    N = embeds.shape[0]
    w = (
        torch.ones(N, dtype=embeds.dtype)
        if weights is None
        else torch.as_tensor(list(weights), dtype=embeds.dtype)
    )
    if w.shape != (N,):
        raise InstantStyleError(
            f"--style-weights: {w.numel()} weights for {N} style images; give one per image"
        )
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise InstantStyleError(f"--style-weights {w.tolist()}: weights must be >= 0 and not all 0")
    if mode == "mean":
        w = (w / w.sum()).to(embeds.device).reshape(N, *[1] * (embeds.ndim - 1))  # [N, 1...]
        return (w * embeds).sum(0, keepdim=True)  # [1, *F]
    if mode == "concat":
        if not torch.allclose(w, w[0].expand_as(w)):
            raise InstantStyleError(
                "--style-weights need --style-combine mean; concat keeps every image at full weight"
            )
        return embeds  # [N, *F]
    raise InstantStyleError(f"--style-combine {mode!r}: use one of {', '.join(COMBINE_MODES)}")


def subtract_content(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: float) -> torch.Tensor:
    """``image_embeds [M, D] - scale * text_embeds [1, D]``; no normalisation (as the paper's code).

    Global embeddings only: patch features ``[M, L, H]`` are refused (``PATCH_SUBTRACTION``).
    """
    if image_embeds.ndim != 2:
        raise InstantStyleError(PATCH_SUBTRACTION)
    if image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise InstantStyleError(
            f"content prompt embedding is {text_embeds.shape[-1]}-d but the image embedding is "
            f"{image_embeds.shape[-1]}-d: they are not in the same CLIP space; pass a matching "
            "CLIPTextModelWithProjection with --content-text-encoder"
        )
    return image_embeds - scale * text_embeds.to(image_embeds)


def with_unconditional(cond: torch.Tensor, do_cfg: bool, uncond: torch.Tensor | None = None) -> torch.Tensor:
    """Precomputed ``ip_adapter_image_embeds`` entry: ``[2, M, *F] = cat(uncond, cond)`` under CFG.

    The unconditional image embedding is zeros (never content-subtracted), matching what
    diffusers' ``encode_image`` uses for a global-embedding adapter, unless ``uncond`` ``[1 or M, *F]``
    is given: a negative style image (ComfyUI's ``image_negative``), or for patch features the
    encoder's hidden states of an all-zero image (``StyleEncoder.unconditional``, as diffusers). Batch
    is 1: diffusers repeats it per image (passing a larger batch hits diffusers issue #9813).
    """
    cond = cond.unsqueeze(0)  # [1, M, *F]
    if not do_cfg:
        return cond
    if uncond is None:
        return torch.cat([torch.zeros_like(cond), cond])
    if uncond.shape[1:] != cond.shape[2:]:
        raise InstantStyleError(
            f"negative embedding is {list(uncond.shape[1:])}, the style's {list(cond.shape[2:])}"
        )
    return torch.cat([uncond.to(cond).expand_as(cond[0]).unsqueeze(0), cond])  # [2, M, *F]


def negative_embedding(embeds: torch.Tensor, scale: float, base: torch.Tensor | None = None) -> torch.Tensor:
    """A negative style image's embedding ``[1, *F]``: ``base + scale * (mean - base)``.

    ``mean`` is the mean of its images ``[N, *F]``; ``base`` the unconditional embedding it replaces
    (``None``: zeros, global features, where this is ``scale * mean``; for patch features the
    all-zero image's hidden states). In CLIP space, before the adapter's projection, as content
    subtraction; scale 0 gives the plain unconditional embedding, 1 the negative image's own.
    """
    mean = embeds.mean(0, keepdim=True)
    if base is None:
        return scale * mean
    base = base.to(mean)
    return base + scale * (mean - base)


# ---------------------------------------------------------------- encoding with a cache


class EmbeddingCache:
    """Image embeddings keyed by (encoder id, image content hash): in memory, and on disk if a dir is given.

    The image encoder (1.8 B parameters for bigG) then runs once per reference image, not once per call.
    """

    def __init__(self, directory: str | Path | None = None, capacity: int = 256):
        self.directory = Path(directory) if directory else None
        self.capacity = capacity
        self._mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(encoder_id: str, image_hash: str, features: str = "global") -> str:
        """The entry of one image's ``features`` (``FEATURES``) from one encoder (global keys unchanged)."""
        import hashlib

        kind = "" if features == "global" else f"{features}\0"
        return hashlib.sha256(f"{encoder_id}\0{kind}{image_hash}".encode()).hexdigest()[:40]

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._mem:
            self._mem.move_to_end(key)
            self.hits += 1
            return self._mem[key]
        if self.directory is not None and (self.directory / f"{key}.safetensors").is_file():
            from safetensors.torch import load_file

            try:
                value = load_file(str(self.directory / f"{key}.safetensors"))["embeds"]
            except Exception:  # a damaged cache entry is recomputed, not fatal
                value = None
            if value is not None:
                self.hits += 1
                self._remember(key, value)
                return value
        self.misses += 1
        return None

    def put(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().to("cpu", torch.float32).contiguous()
        self._remember(key, value)
        if self.directory is not None:
            from safetensors.torch import save_file

            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.directory / f"{key}.safetensors") as tmp:
                save_file({"embeds": value}, str(tmp))

    def _remember(self, key: str, value: torch.Tensor) -> None:
        self._mem[key] = value
        self._mem.move_to_end(key)
        while len(self._mem) > self.capacity:
            self._mem.popitem(last=False)


def encoder_features(image_encoder, pixels: torch.Tensor, features: str = "global") -> torch.Tensor:
    """What the adapter reads from ``pixels [n, 3, S, S]``: ``image_embeds [n, D]`` (global) or the
    penultimate hidden states ``[n, L, H]`` (patch), as diffusers' ``encode_image``."""
    if features == "patch":
        return image_encoder(pixels, output_hidden_states=True).hidden_states[-2]  # [n, L, H]
    if features != "global":
        raise InstantStyleError(f"unknown image features {features!r}; use one of {', '.join(FEATURES)}")
    return image_encoder(pixels).image_embeds  # [n, D]


@torch.no_grad()
def encode_images(
    image_encoder,
    feature_extractor,
    images,
    encoder_id: str,
    cache: EmbeddingCache | None = None,
    features: str = "global",
):
    """CLIP image features ``[N, *F]`` (float32, CPU) for PIL ``images``, cached (``encoder_features``)."""
    from .images import image_hash

    out: list[torch.Tensor | None] = []
    todo: list[int] = []
    keys = [EmbeddingCache.key(encoder_id, image_hash(im), features) for im in images]
    for i, key in enumerate(keys):
        hit = cache.get(key) if cache is not None else None
        out.append(hit)
        if hit is None:
            todo.append(i)
    if todo:
        param = next(image_encoder.parameters())
        pixels = feature_extractor(images=[images[i] for i in todo], return_tensors="pt").pixel_values
        embeds = encoder_features(image_encoder, pixels.to(param.device, param.dtype), features)  # [n, *F]
        for j, i in enumerate(todo):
            out[i] = embeds[j].float().cpu()
            if cache is not None:
                cache.put(keys[i], out[i])
    return torch.stack(out)


class StyleEncoder:
    """Turns style references (paths, PIL images, ``@saved`` styles, ``Style``) into a ``Style``.

    Holds the image encoder, its preprocessor and the embedding cache; usable without a base
    model (``instantstyle style save`` needs only this).
    """

    def __init__(
        self,
        image_encoder,
        feature_extractor,
        encoder_id: str,
        cache: EmbeddingCache | None = None,
        max_pixels: int | None = None,
        styles_directory: str | Path | None = None,
        features: str = "global",
    ):
        from .images import DEFAULT_MAX_PIXELS

        if features not in FEATURES:
            raise InstantStyleError(f"unknown image features {features!r}; use one of {', '.join(FEATURES)}")
        self.features = features  # what the adapter reads (FEATURES)
        self._uncond: tuple | None = None  # (encoder dtype, device, unconditional patch features)
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self.encoder_id = encoder_id
        self.cache = cache if cache is not None else EmbeddingCache()
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        self.styles_directory = styles_directory

    @property
    def cache_id(self) -> str:
        dtype = str(next(self.image_encoder.parameters()).dtype).removeprefix("torch.")
        return f"{self.encoder_id}@{dtype}"

    @torch.no_grad()
    def unconditional(self) -> torch.Tensor | None:
        """The unconditional features of the CFG batch: ``None`` for global ones (zeros, made by
        ``with_unconditional``); for patch features the encoder's hidden states of an all-zero pixel
        tensor ``[1, L, H]`` (float32, CPU), as diffusers' ``encode_image(output_hidden_states=True)``."""
        if self.features == "global":
            return None
        param = next(self.image_encoder.parameters())
        if self._uncond is None or self._uncond[:2] != (param.dtype, param.device):
            size = self.image_encoder.config.image_size
            zeros = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
            hidden = encoder_features(self.image_encoder, zeros, "patch").float().cpu()
            self._uncond = (param.dtype, param.device, hidden)
        return self._uncond[2]

    def encode(self, refs: Sequence, weights: Sequence[float] | None = None) -> Style:
        """Embed references with per-reference weights; a saved style keeps its inner weights."""
        if not refs:
            raise InstantStyleError("no style image given; pass --style IMAGE (or @name of a saved style)")
        weights = list(weights) if weights is not None else [1.0] * len(refs)
        if len(weights) != len(refs):
            raise InstantStyleError(
                f"--style-weights: {len(weights)} weights for {len(refs)} style references"
            )
        parts, flat_w, hashes = [], [], []
        for ref, w in zip(refs, weights, strict=True):
            style = self._one(ref)
            inner = torch.tensor(style.weights, dtype=torch.float32)
            parts.append(style.embeds)
            flat_w += (w * inner / inner.sum()).tolist()
            hashes += style.image_hashes
        return Style(torch.cat(parts), flat_w, self.encoder_id, hashes, features=self.features)

    def _one(self, ref) -> Style:
        from .images import image_hash, load_image

        if isinstance(ref, Style):
            style = ref
        elif isinstance(ref, str) and ref.startswith("@"):
            style = load_style(ref, self.styles_directory)
        else:
            image = load_image(ref, what="style image", max_pixels=self.max_pixels)
            embeds = encode_images(
                self.image_encoder, self.feature_extractor, [image], self.cache_id, self.cache, self.features
            )
            return Style(embeds, [1.0], self.encoder_id, [image_hash(image)], features=self.features)
        if style.features != self.features:
            raise InstantStyleError(
                f"style '{style.name}' holds {style.features} image features but this model's IP-Adapter reads "
                f"{self.features} ones ({'an IP-Adapter Plus' if self.features == 'patch' else 'a global adapter'}); "
                f"save it again with this adapter (`instantstyle style save --features {self.features}`)"
            )
        if style.encoder_id != self.encoder_id:
            raise InstantStyleError(
                f"style '{style.name}' was encoded with image encoder '{style.encoder_id}', but this run uses "
                f"'{self.encoder_id}'; save it again with this encoder"
            )
        return style


# ---------------------------------------------------------------- saved styles


@dataclass
class Style:
    """Per-image embeddings of one or several references, with their weights and provenance."""

    embeds: torch.Tensor  # [N, D] float32 (global features) or [N, L, H] (patch features)
    weights: list[float]
    encoder_id: str
    image_hashes: list[str] = field(default_factory=list)
    name: str | None = None
    created: float = field(default_factory=time.time)
    features: str = "global"  # FEATURES: what embeds are

    def metadata(self) -> dict[str, str]:
        return {
            "format": "instantstyle.style/1",
            "encoder_id": self.encoder_id,
            "features": self.features,
            "weights": json.dumps(self.weights),
            "image_hashes": json.dumps(self.image_hashes),
            "name": self.name or "",
            "created": str(self.created),
        }


def styles_dir() -> Path:
    root = os.environ.get("INSTANTSTYLE_STYLES") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "instantstyle", "styles"
    )
    return Path(root)


class StyleExistsError(InstantStyleError):
    """A style of that name is already saved (and overwrite was not asked for)."""


def style_path(name: str, directory: str | Path | None = None) -> Path:
    """Path of a named style; the name is checked so no request can escape the styles directory."""
    if not isinstance(name, str) or not STYLE_NAME.fullmatch(name):  # fullmatch: no trailing newline
        raise InstantStyleError(
            f"style name {name!r} is not allowed; use 1-64 letters, digits, '_', '-', '.' (not starting with '.')"
        )
    return Path(directory or styles_dir()) / f"{name}.safetensors"


def save_style(style: Style, name: str, directory: str | Path | None = None, overwrite: bool = False) -> Path:
    from safetensors.torch import save_file

    path = style_path(name, directory)
    exists = StyleExistsError(f"style '{name}' already exists at {path}; pass overwrite=True to replace it")
    if path.exists() and not overwrite:
        raise exists
    path.parent.mkdir(parents=True, exist_ok=True)
    style.name = name
    try:  # create-if-absent unless overwrite: another writer that got there first wins (409 upstream)
        with atomic_write(path, exclusive=not overwrite) as tmp:
            save_file({"embeds": style.embeds.contiguous().float()}, str(tmp), metadata=style.metadata())
    except FileExistsError:
        raise exists from None
    return path


def load_style(name_or_path: str, directory: str | Path | None = None) -> Style:
    """Load ``@name`` / ``name`` from the styles directory, or a ``.safetensors`` path."""
    from safetensors import safe_open

    ref = name_or_path[1:] if name_or_path.startswith("@") else name_or_path
    path = Path(ref) if ref.endswith(".safetensors") and os.sep in ref else style_path(ref, directory)
    if not path.is_file():
        known = ", ".join(list_styles(directory)) or "none saved yet"
        raise InstantStyleError(
            f"style '{ref}' not found in {path.parent} (saved styles: {known}); "
            "create it with `instantstyle style save NAME IMAGE...`"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            embeds = f.get_tensor("embeds")
    except Exception:
        raise InstantStyleError(f"style file '{path}' is damaged; save it again") from None
    if meta.get("format") != "instantstyle.style/1":
        raise InstantStyleError(f"'{path}' is not an instantstyle style file")
    return Style(
        embeds=embeds,
        weights=json.loads(meta["weights"]),
        encoder_id=meta["encoder_id"],
        image_hashes=json.loads(meta.get("image_hashes", "[]")),
        name=meta.get("name") or path.stem,
        created=float(meta.get("created", 0)),
        features=meta.get("features", "global"),  # files written before patch features are global
    )


def list_styles(directory: str | Path | None = None) -> list[str]:
    d = Path(directory or styles_dir())
    return sorted(p.stem for p in d.glob("*.safetensors")) if d.is_dir() else []


def delete_style(name: str, directory: str | Path | None = None) -> None:
    path = style_path(name, directory)
    if not path.is_file():
        raise InstantStyleError(f"style '{name}' not found")
    path.unlink()
