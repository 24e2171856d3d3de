"""The adapter trainer's on-disk cache of per-sample latents and embeddings."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..files import atomic_write


class TrainCache:
    """Per-sample latents, text and image embeddings on disk, keyed by image bytes, caption,
    resolution and model ids: the frozen encoders then run once per sample, not once per epoch."""

    KEYS = ("latents", "prompt_embeds", "pooled", "image_embeds", "time_ids")

    def __init__(self, directory: str | Path, model_key: str):
        self.directory = Path(directory)
        self.model_key = model_key
        self.hits = 0
        self.misses = 0

    def key(self, digest: str, caption: str, resolution: int) -> str:
        return hashlib.sha256(f"{self.model_key}\0{digest}\0{caption}\0{resolution}".encode()).hexdigest()[
            :40
        ]

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> dict | None:
        from safetensors.torch import load_file

        p = self.path(key)
        if not p.is_file():
            self.misses += 1
            return None
        try:
            value = load_file(str(p))
        except Exception:  # a damaged entry is recomputed
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: dict) -> None:
        from safetensors.torch import save_file

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(p, fsync=False) as tmp:  # a lost entry is recomputed
            save_file({k: v.detach().cpu().contiguous() for k, v in value.items()}, str(tmp))
