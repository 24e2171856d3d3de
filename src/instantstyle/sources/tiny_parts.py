"""What every tiny random-weight model shares (``sources.tiny`` for SDXL, ``sources.tiny_sd15``):
an offline character-level CLIP tokenizer (no Hub access). The random adapters are in
``sources.tiny_adapters``.
"""

from __future__ import annotations

import json
import string
from pathlib import Path


def _tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    chars = [c for c in string.printable if not c.isspace() and not c.isupper()]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)
