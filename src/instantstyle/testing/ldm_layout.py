"""Re-export for tests: the original-LDM key layout lives in ``instantstyle.sources.ldm_layout``."""

from __future__ import annotations

from ..sources.ldm_layout import *  # noqa: F403
