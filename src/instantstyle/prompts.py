"""Prompt length: CLIP reads 77 tokens (75 of the prompt between its start and end tokens).

SDXL's text encoders see at most 77 tokens; diffusers cuts the rest off (and says so only in a
log line that front ends silence). A1111 and ComfyUI users write longer prompts, so a prompt
that will be cut gets a ``PromptTruncatedWarning`` naming its token count and the words that
are dropped. We do not (yet) encode long prompts in 75-token chunks as A1111 does: that changes
the picture of every long prompt and the text embedding that content subtraction uses, so it
would be an opt-in mode of its own; until then, the warning says exactly what is lost.

A server hands these messages to its clients: ``collected_warnings()`` gathers the ones raised
through ``notify`` (this module's and others', e.g. ``schedulers``' guidance warning) in this thread (``warnings.catch_warnings`` is process-wide and cannot tell two workers apart).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

from .errors import InstantStyleWarning

CLIP_TOKENS = 77  # including the start and end tokens
_collecting = threading.local()  # .messages: the list this thread's warnings go to, or None


class PromptTruncatedWarning(InstantStyleWarning):
    """A prompt is longer than the text encoders read."""


def dropped(tokenizer, text: str) -> tuple[int, str] | None:
    """``(tokens, dropped text)`` when ``text`` has more tokens than ``tokenizer`` reads, else None."""
    limit = min(int(getattr(tokenizer, "model_max_length", CLIP_TOKENS) or CLIP_TOKENS), 10_000)
    ids = tokenizer(text, truncation=False, verbose=False).input_ids
    if len(ids) <= limit:
        return None
    body = len(ids) - 2  # without the start and end tokens
    return body, tokenizer.decode(ids[limit - 1 : -1]).strip()


def warn_if_truncated(tokenizer, prompts: dict[str, str | None]) -> list[str]:
    """Warn once per prompt that will be cut (``{"prompt": ..., "negative_prompt": ...}``); the messages."""
    messages = []
    limit = min(int(getattr(tokenizer, "model_max_length", CLIP_TOKENS) or CLIP_TOKENS), 10_000)
    for name, text in prompts.items():
        if not text:
            continue
        cut = dropped(tokenizer, text)
        if cut is None:
            continue
        tokens, lost = cut
        shown = lost if len(lost) <= 120 else lost[:117] + "..."
        msg = (
            f"{name} has {tokens} tokens; the text encoders read the first {limit - 2}, so this part is "
            f"ignored: '{shown}' (shorten it, or move what matters to the front)"
        )
        notify(msg, PromptTruncatedWarning, stacklevel=4)
        messages.append(msg)
    return messages


def notify(msg: str, category: type[Warning] = InstantStyleWarning, stacklevel: int = 3) -> None:
    """Warn ``msg`` and add it to this thread's ``collected_warnings`` list, if one is open
    (the one channel for what a generation warns about: a cut prompt, guidance for few steps)."""
    warnings.warn(msg, category, stacklevel=stacklevel)
    if getattr(_collecting, "messages", None) is not None:
        _collecting.messages.append(msg)


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """The warnings ``notify`` raised in this thread inside the block, in a list (they are still warned)."""
    outer = getattr(_collecting, "messages", None)
    _collecting.messages = messages = []
    try:
        yield messages
    finally:
        _collecting.messages = outer
