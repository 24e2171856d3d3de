"""The layout of an adapter training run's ``OUT`` directory and its checkpoints.

A checkpoint directory is complete once its ``DONE_MARKER`` exists (written last); a run is
continued from its latest complete checkpoint, never overwritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import InstantStyleError

CHECKPOINTS = "checkpoints"
# What a run leaves before its first complete checkpoint: starting it again loses nothing.
_RESTARTABLE = {"train_config.json", "train_log.jsonl", CHECKPOINTS}
DONE_MARKER = "trainer_state.json"
ADAPTER_NAME = "adapter.safetensors"


def complete_checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    ck = Path(out) / CHECKPOINTS
    if not ck.is_dir():
        return []
    return sorted((d for d in ck.glob("checkpoint-*") if (d / DONE_MARKER).is_file()), key=lambda d: d.name)


def latest_checkpoint(out: str | Path) -> Path | None:
    done = complete_checkpoints(out)
    return done[-1] if done else None


def check_out(out: Path, resume: str | None, max_steps: int) -> None:
    """Never lose work: a finished or started run in ``out`` is continued or refused, not overwritten."""
    ck = out / CHECKPOINTS
    existing = sorted(ck.glob("checkpoint-*")) if ck.is_dir() else []
    adapter = out / ADAPTER_NAME
    if resume is None and (existing or adapter.exists()):
        raise InstantStyleError(
            f"out '{out}' already holds a training run; resume it (resume='latest') or choose another out"
        )
    if resume != "latest":
        return
    latest = latest_checkpoint(out)
    if latest is None:
        leftovers = (
            sorted(p.name for p in out.iterdir() if p.name not in _RESTARTABLE) if out.is_dir() else []
        )
        if adapter.exists() or leftovers:
            raise InstantStyleError(
                f"resume='latest': out '{out}' holds no complete checkpoint to resume from but "
                f"{'a finished adapter' if adapter.exists() else ', '.join(leftovers[:3])}; nothing was "
                "changed: choose another out to train again"
            )
        return
    step = int(json.loads((latest / DONE_MARKER).read_text())["global_step"])
    if step >= max_steps and adapter.exists():
        raise InstantStyleError(
            f"resume='latest': the run in '{out}' is finished (step {step} of max_steps "
            f"{max_steps}); nothing was changed: raise max_steps to train further"
        )


def prune(out: Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (``None``: keep every one)."""
    done = complete_checkpoints(out)
    if keep is not None and len(done) > keep:
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
