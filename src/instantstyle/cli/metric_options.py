"""The metric flags ``eval``, ``probe-blocks`` and ``compare --metrics`` share, and their scorer."""

from __future__ import annotations

import argparse


def add_metric_args(p: argparse.ArgumentParser, *, with_metrics_flag: bool = False) -> None:
    """``--metrics``, the three metric models and their device."""
    from ..metrics import DEFAULT_METRICS
    from ..metrics.clip_t import DEFAULT_CLIP
    from ..metrics.csd import DEFAULT_CSD
    from ..metrics.dino import DEFAULT_DINO

    g = p.add_argument_group("metrics (models: local path, Hub 'owner/repo[/path]', or 'tiny')")
    if with_metrics_flag:
        g.add_argument(
            "--metrics",
            nargs="?",
            const=",".join(DEFAULT_METRICS),
            default=None,
            metavar="A,B",
            help="score every output and add the scores to the grid and the reports (default when "
            f"given without a list: {','.join(DEFAULT_METRICS)})",
        )
    else:
        g.add_argument(
            "--metrics",
            default=",".join(DEFAULT_METRICS),
            metavar="A,B",
            help="csd_style (style similarity, CSD), clip_t (text alignment, CLIP-T), dino_leakage "
            "(content leakage, DINOv2), csd_content (content leakage, CSD content head) "
            "(default: %(default)s)",
        )
    g.add_argument(
        "--csd", default=None, help=f"CSD checkpoint (default: {DEFAULT_CSD}; 'tiny' with --base tiny)"
    )
    g.add_argument("--clip", default=None, help=f"CLIP model for CLIP-T (default: {DEFAULT_CLIP})")
    g.add_argument("--dino", default=None, help=f"DINOv2 model for leakage (default: {DEFAULT_DINO})")
    g.add_argument("--metrics-device", default=None, help="device of the metric models (default: --device's)")


def make_scorer(args, metrics: str | None = None):
    from .. import models
    from ..metrics import parse_metrics
    from ..metrics.scorer import Scorer

    tiny = models.is_tiny(getattr(args, "base", None) or "")
    pick = {k: getattr(args, k) or ("tiny" if tiny else None) for k in ("csd", "clip", "dino")}
    device = args.metrics_device or getattr(args, "device", None)
    dtype = getattr(args, "dtype", None)
    return Scorer(parse_metrics(metrics or args.metrics), device=device, dtype=dtype, **pick)
