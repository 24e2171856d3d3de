"""Style embeddings: encoding with a cache, combining references, content subtraction, style files.

The maths is in pure tensor functions (``combine_styles``, ``subtract_content``,
``with_unconditional``) tested on hand-made tensors. Content subtraction follows InstantStyle
(arXiv 2404.02733, Sec. 3.2): in the joint CLIP space, before the IP-Adapter's image projection,
``style = image_embeds - scale * text_embeds(content_prompt)``, on the conditional branch only.
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
STYLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# ---------------------------------------------------------------- pure maths


def combine_styles(
    embeds: torch.Tensor, weights: Sequence[float] | None = None, mode: str = "mean"
) -> torch.Tensor:
    """Combine per-image embeddings ``[N, D]`` into the adapter's image set ``[M, D]``.

    - ``mean``: weighted mean in CLIP space, ``M = 1`` (weights need not sum to 1);
    - ``concat``: keep one set of tokens per image, ``M = N`` (diffusers' multi-image behaviour);
      per-image weights cannot be expressed there, so they must be all equal.
    """
    N, D = embeds.shape
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
        return ((w / w.sum()).to(embeds.device)[:, None] * embeds).sum(0, keepdim=True)  # [1, D]
    if mode == "concat":
        if not torch.allclose(w, w[0].expand_as(w)):
            raise InstantStyleError(
                "--style-weights need --style-combine mean; concat keeps every image at full weight"
            )
        return embeds  # [N, D]
    raise InstantStyleError(f"--style-combine {mode!r}: use one of {', '.join(COMBINE_MODES)}")


def subtract_content(image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: float) -> torch.Tensor:
    """``image_embeds [M, D] - scale * text_embeds [1, D]``; no normalisation (as the paper's code)."""
    if image_embeds.shape[-1] != text_embeds.shape[-1]:
        raise InstantStyleError(
            f"content prompt embedding is {text_embeds.shape[-1]}-d but the image embedding is "
            f"{image_embeds.shape[-1]}-d: they are not in the same CLIP space; pass a matching "
            "CLIPTextModelWithProjection with --content-text-encoder"
        )
    return image_embeds - scale * text_embeds.to(image_embeds)


def with_unconditional(cond: torch.Tensor, do_cfg: bool, uncond: torch.Tensor | None = None) -> torch.Tensor:
    """Precomputed ``ip_adapter_image_embeds`` entry: ``[2, M, D] = cat(uncond, cond)`` under CFG.

    The unconditional image embedding is zeros (never content-subtracted), matching what
    diffusers' ``encode_image`` uses for a global-embedding adapter, unless ``uncond`` ``[1 or M, D]``
    is given (a negative style image, ComfyUI's ``image_negative``). Batch is 1: diffusers repeats it
    per image (passing a larger batch hits diffusers issue #9813).
    """
    cond = cond.unsqueeze(0)  # [1, M, D]
    if not do_cfg:
        return cond
    if uncond is None:
        return torch.cat([torch.zeros_like(cond), cond])
    if uncond.shape[-1] != cond.shape[-1]:
        raise InstantStyleError(f"negative embedding is {uncond.shape[-1]}-d, the style's {cond.shape[-1]}-d")
    return torch.cat([uncond.to(cond).expand_as(cond[0]).unsqueeze(0), cond])  # [2, M, D]


def negative_embedding(embeds: torch.Tensor, scale: float) -> torch.Tensor:
    """A negative style image's embedding ``[1, D]``: mean of its images ``[N, D]`` times ``scale``
    (in CLIP space, before the adapter's projection, as content subtraction; 0 gives the zeros)."""
    return scale * embeds.mean(0, keepdim=True)


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
    def key(encoder_id: str, image_hash: str) -> str:
        import hashlib

        return hashlib.sha256(f"{encoder_id}\0{image_hash}".encode()).hexdigest()[:40]

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


@torch.no_grad()
def encode_images(
    image_encoder, feature_extractor, images, encoder_id: str, cache: EmbeddingCache | None = None
):
    """Projected CLIP image embeddings ``[N, D]`` (float32, CPU) for PIL ``images``, cached."""
    from .images import image_hash

    out: list[torch.Tensor | None] = []
    todo: list[int] = []
    keys = [EmbeddingCache.key(encoder_id, image_hash(im)) for im in images]
    for i, key in enumerate(keys):
        hit = cache.get(key) if cache is not None else None
        out.append(hit)
        if hit is None:
            todo.append(i)
    if todo:
        param = next(image_encoder.parameters())
        pixels = feature_extractor(images=[images[i] for i in todo], return_tensors="pt").pixel_values
        embeds = image_encoder(pixels.to(param.device, param.dtype)).image_embeds  # [n, D]
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
    ):
        from .images import DEFAULT_MAX_PIXELS

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
        return Style(torch.cat(parts), flat_w, self.encoder_id, hashes)

    def _one(self, ref) -> Style:
        from .images import image_hash, load_image

        if isinstance(ref, Style):
            style = ref
        elif isinstance(ref, str) and ref.startswith("@"):
            style = load_style(ref, self.styles_directory)
        else:
            image = load_image(ref, what="style image", max_pixels=self.max_pixels)
            embeds = encode_images(
                self.image_encoder, self.feature_extractor, [image], self.cache_id, self.cache
            )
            return Style(embeds, [1.0], self.encoder_id, [image_hash(image)])
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

    embeds: torch.Tensor  # [N, D] float32
    weights: list[float]
    encoder_id: str
    image_hashes: list[str] = field(default_factory=list)
    name: str | None = None
    created: float = field(default_factory=time.time)

    def metadata(self) -> dict[str, str]:
        return {
            "format": "instantstyle.style/1",
            "encoder_id": self.encoder_id,
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
    )


def list_styles(directory: str | Path | None = None) -> list[str]:
    d = Path(directory or styles_dir())
    return sorted(p.stem for p in d.glob("*.safetensors")) if d.is_dir() else []


def delete_style(name: str, directory: str | Path | None = None) -> None:
    path = style_path(name, directory)
    if not path.is_file():
        raise InstantStyleError(f"style '{name}' not found")
    path.unlink()
