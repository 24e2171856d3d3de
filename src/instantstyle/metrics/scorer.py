"""``Scorer``: load the metric models once, embed images (cached by pixel hash) and score outputs.

An output is scored against its prompt (``clip_t``) and its style references (every other metric;
with several references, the mean of the cosines to each, weighted as the generation weighted
them). Only the models the chosen metrics need are loaded, on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

from .. import models
from ..errors import InstantStyleError
from ..images import image_hash
from . import METRICS, parse_metrics
from .clip_t import DEFAULT_CLIP
from .csd import DEFAULT_CSD
from .dino import DEFAULT_DINO
from .maths import cosine

BATCH = 8


@dataclass
class Item:
    """One output to score: the image, its prompt, its style references (and their weights)."""

    image: Image.Image
    prompt: str
    references: list[Image.Image]
    weights: list[float] | None = None
    info: dict = field(default_factory=dict)  # carried into the report (setting, file, seed, ...)


def weighted_reference_score(
    out: torch.Tensor, refs: torch.Tensor, weights: Sequence[float] | None = None
) -> float:
    """Weighted mean over references of ``cosine(out, ref)``: ``out [D]``, ``refs [R, D]``."""
    sims = cosine(out[None, :].expand_as(refs), refs)  # [R]
    if weights is None:
        return float(sims.mean())
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    if w.numel() != sims.numel() or float(w.sum()) <= 0:
        return float(sims.mean())
    return float((sims * w).sum() / w.sum())


class Scorer:
    """Scores outputs with the chosen metrics; models from ``csd``/``clip``/``dino`` (path, Hub id, ``tiny``)."""

    def __init__(
        self,
        metrics: Sequence[str] | str | None = None,
        *,
        csd: str | None = None,
        clip: str | None = None,
        dino: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ):
        self.metrics = parse_metrics(metrics)
        self.sources = {"csd": csd or DEFAULT_CSD, "clip": clip or DEFAULT_CLIP, "dino": dino or DEFAULT_DINO}
        self.device, self.dtype = models.device_and_dtype(device, dtype)
        self._models: dict[str, tuple] = {}
        self._cache: dict[tuple[str, str], torch.Tensor] = {}  # (embedding kind, image hash or text) -> [D]

    @property
    def needed(self) -> list[str]:
        return sorted({METRICS[m].model for m in self.metrics})

    @property
    def ids(self) -> dict[str, str]:
        return {
            k: models.canonical_id(v) if v != models.TINY else v
            for k, v in self.sources.items()
            if k in self.needed
        }

    def load(self) -> Scorer:
        """Load every model the metrics need now (fails early: a missing model names its fetch command)."""
        for kind in self.needed:
            self._model(kind)
        return self

    def set_model(self, kind: str, *loaded) -> Scorer:
        """Use already-built models for ``kind`` (``csd``: model, processor; ``clip``: model, tokenizer,
        processor; ``dino``: model, processor), e.g. the random full-size ones of the benchmark."""
        if kind not in self.sources:
            raise InstantStyleError(f"unknown metric model kind {kind!r}; one of {', '.join(self.sources)}")
        self._models[kind] = tuple(loaded)
        self._cache.clear()
        return self

    def _model(self, kind: str) -> tuple:
        if kind not in self._models:
            from . import clip_t, csd, dino

            module = {"csd": csd, "clip": clip_t, "dino": dino}[kind]
            loaded = module.load(self.sources[kind], self.device, self.dtype)
            self._models[kind] = loaded if isinstance(loaded, tuple) else (loaded,)
        return self._models[kind]

    # ------------------------------------------------------------------ embeddings

    def _embed_images(self, images: Sequence[Image.Image]) -> list[str]:
        """Embed every uncached image with every needed model; returns the images' hashes."""
        from . import clip_t, csd, dino

        hashes = [image_hash(im) for im in images]
        todo = {h: im for h, im in zip(hashes, images, strict=True) if not self._has(h)}
        items = list(todo.items())
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            keys, ims = [h for h, _ in chunk], [im.convert("RGB") for _, im in chunk]
            if "csd" in self.needed:
                style, content = csd.embed(*self._model("csd"), ims)
                self._store("csd_style", keys, style)
                self._store("csd_content", keys, content)
            if "clip" in self.needed:
                model, _tok, proc = self._model("clip")
                self._store("clip_image", keys, clip_t.embed_images(model, proc, ims))
            if "dino" in self.needed:
                self._store("dino", keys, dino.embed(*self._model("dino"), ims))
        return hashes

    def _has(self, h: str) -> bool:
        kinds = {"csd": "csd_style", "clip": "clip_image", "dino": "dino"}
        return all((kinds[k], h) in self._cache for k in self.needed)

    def _store(self, kind: str, keys: list[str], embeds: torch.Tensor) -> None:
        for key, row in zip(keys, embeds, strict=True):
            self._cache[(kind, key)] = row

    def _text(self, prompt: str) -> torch.Tensor:
        from . import clip_t

        if ("clip_text", prompt) not in self._cache:
            model, tok, _proc = self._model("clip")
            self._cache[("clip_text", prompt)] = clip_t.embed_texts(model, tok, [prompt])[0]
        return self._cache[("clip_text", prompt)]

    # ------------------------------------------------------------------ scores

    def score(self, items: Sequence[Item], progress=None) -> list[dict[str, float]]:
        """One ``{metric: value}`` per item; ``progress(n_done)`` is called as items finish."""
        rows = []
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            refs = [r for it in chunk for r in it.references]
            out_hashes = self._embed_images([it.image for it in chunk])
            ref_hashes = self._embed_images(refs)
            k = 0
            for it, h in zip(chunk, out_hashes, strict=True):
                mine = ref_hashes[k : k + len(it.references)]
                k += len(it.references)
                rows.append(self._score_one(it, h, mine))
            if progress is not None:
                progress(len(chunk))
        return rows

    def _score_one(self, item: Item, h: str, refs: list[str]) -> dict[str, float]:
        kinds = {"csd_style": "csd_style", "csd_content": "csd_content", "dino_leakage": "dino"}
        row = {}
        for name in self.metrics:
            if name == "clip_t":
                row[name] = float(cosine(self._cache[("clip_image", h)], self._text(item.prompt)))
            elif not refs:
                row[name] = float("nan")  # nothing to compare with (e.g. a B-LoRA output without its image)
            else:
                kind = kinds[name]
                ref_embeds = torch.stack([self._cache[(kind, r)] for r in refs])
                row[name] = weighted_reference_score(self._cache[(kind, h)], ref_embeds, item.weights)
        return row
