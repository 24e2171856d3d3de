"""Metrics of style-preserving generation, registered by name (one module per metric model).

- ``csd_style`` (higher is better): CSD style similarity between an output and its style reference
  (``metrics.csd``, Somepalli et al., arXiv 2404.01292).
- ``clip_t`` (higher is better): CLIP text-image cosine between an output and its prompt
  (``metrics.clip_t``, CLIPScore's model, arXiv 2104.08718).
- ``dino_leakage`` (lower is better): DINOv2 similarity between an output and its style reference:
  the reference's content leaking into the output (``metrics.dino``, arXiv 2304.07193).
- ``csd_content`` (lower is better): the same through CSD's content head (``metrics.csd``).

The maths are pure functions over embeddings (``metrics.maths``); ``metrics.scorer`` loads the
models and scores images; ``metrics.runner`` is ``instantstyle eval``; ``metrics.probe`` is
``instantstyle probe-blocks``. This module imports no torch, so a front end can validate metric
names before anything loads.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InstantStyleError


@dataclass(frozen=True)
class Metric:
    name: str
    module: str  # submodule of instantstyle.metrics holding its model
    model: str  # the encoder it needs: "csd" | "clip" | "dino"
    label: str  # short axis label
    summary: str
    paper: str
    higher_is_better: bool
    against: str  # what the output is compared with: "reference" (the style image) | "prompt"


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "csd_style",
            "csd",
            "csd",
            "style similarity (CSD)",
            "CSD style-head cosine between the output and the style reference",
            "arXiv 2404.01292",
            True,
            "reference",
        ),
        Metric(
            "clip_t",
            "clip_t",
            "clip",
            "text alignment (CLIP-T)",
            "CLIP ViT-L/14 cosine between the output and its prompt",
            "arXiv 2104.08718",
            True,
            "prompt",
        ),
        Metric(
            "dino_leakage",
            "dino",
            "dino",
            "content leakage (DINOv2)",
            "DINOv2 class-token cosine between the output and the style reference",
            "arXiv 2304.07193",
            False,
            "reference",
        ),
        Metric(
            "csd_content",
            "csd",
            "csd",
            "content leakage (CSD content)",
            "CSD content-head cosine between the output and the style reference",
            "arXiv 2404.01292",
            False,
            "reference",
        ),
    )
}
DEFAULT_METRICS = tuple(METRICS)
STYLE, TEXT, LEAKAGE = "csd_style", "clip_t", "dino_leakage"  # the axes of the plots


def get(name: str) -> Metric:
    if name in METRICS:
        return METRICS[name]
    close = difflib.get_close_matches(name, METRICS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise InstantStyleError(f"unknown metric {name!r}{hint}; valid metrics: {', '.join(METRICS)}")


def parse_metrics(spec: str | Sequence[str] | None) -> list[str]:
    """``"csd_style,clip_t"`` -> checked names (default: all of them)."""
    if spec is None:
        return list(DEFAULT_METRICS)
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise InstantStyleError(f"--metrics is empty; give e.g. {','.join(DEFAULT_METRICS)}")
    for name in names:
        get(name)
    if len(set(names)) != len(names):
        raise InstantStyleError(f"--metrics {','.join(names)}: a metric is listed twice")
    return names
