"""Where the metric models come from: the same references as the generation models.

A metric model is a local path, a Hub reference (``owner/repo`` or ``owner/repo/path/in/repo``,
through huggingface_hub's cache, so ``HF_HUB_OFFLINE=1`` and ``HF_HOME`` work) or ``tiny`` (the
random-weight test models of ``instantstyle.sources.tiny_metrics``). Anything missing is one line
naming the ``instantstyle download`` command. Every checkpoint loads with strict key matching: a missing,
renamed or extra key is a one-line error, never a silently random-initialised layer (which is
what transformers' ``from_pretrained`` does with a warning).
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import models
from ..errors import InstantStyleError


def key_mismatch(
    what: str, where: str, missing: Iterable[str], unexpected: Iterable[str], mismatched: Iterable[str] = ()
) -> InstantStyleError:
    """One line naming the first few offending keys of a checkpoint that is not in the expected layout."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        keys = sorted(str(k) for k in keys)
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            parts.append(f"{label}: {shown}")
    return InstantStyleError(
        f"{what} '{where}' is not in the expected checkpoint layout ({'; '.join(parts)}); "
        "re-download it or point to the published checkpoint"
    )


def from_pretrained_strict(cls, spec: str, what: str, **kwargs):
    """``cls.from_pretrained`` of a transformers model from a local dir or a Hub (sub)folder, strictly.

    Returns the model in eval mode. A missing model is a ``ModelNotFoundError`` with its fetch command;
    a checkpoint whose keys differ from the architecture's is one line listing them.
    """
    src = models.parse_source(spec)
    if src.local is not None:
        if not (src.local / "config.json").is_file():
            raise models.missing(what, src, f" as a {cls.__name__} directory (no config.json)")
        where, extra = str(src.local), {}
    else:
        where, extra = src.repo_id, ({"subfolder": src.subpath} if src.subpath else {})
    try:
        model, info = cls.from_pretrained(where, output_loading_info=True, **extra, **kwargs)
    except OSError:
        raise models.missing(what, src) from None
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", ())]
    if info.get("missing_keys") or info.get("unexpected_keys") or mismatched:
        raise key_mismatch(
            what, spec, info.get("missing_keys", ()), info.get("unexpected_keys", ()), mismatched
        )
    return model.eval()


def is_tiny(spec: str) -> bool:
    return spec == models.TINY
