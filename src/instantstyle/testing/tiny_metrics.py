"""Re-export for tests: the tiny metric models live in ``instantstyle.sources.tiny_metrics``."""

from __future__ import annotations

from ..sources.tiny_metrics import *  # noqa: F403
