"""The maths of the evaluation, as pure functions over embeddings and score lists.

- ``cosine(a, b)``: row-wise cosine similarity, the score of every metric here (CSD style and content
  similarity, DINOv2 leakage, CLIP-T), as in the CSD paper (Somepalli et al., arXiv 2404.01292,
  Sec. 4) and the InstantStyle-Plus evaluation code.
- ``clip_score(cos)``: CLIPScore's text-image scaling, ``100 * max(cos, 0)``, as torchmetrics'
  ``CLIPScore`` (after Hessel et al., arXiv 2104.08718, whose own weight is 2.5 instead of 100).
- ``bootstrap_ci(values)``: the percentile bootstrap interval of a mean (Efron & Tibshirani 1993, ch. 13).
- ``pareto_front(points, maximize)``: the non-dominated points of a 2-D score plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows: ``[N, D] x [N, D] -> [N]`` (or ``[D] x [D] -> []``).

    ``b`` may be a single row ``[1, D]``, compared with every row of ``a``. Computed in float32.
    """
    a, b = a.float(), b.float()
    a = torch.nn.functional.normalize(a, dim=-1)
    b = torch.nn.functional.normalize(b, dim=-1)
    return (a * b).sum(dim=-1)


def clip_score(cos: torch.Tensor | float, weight: float = 100.0) -> torch.Tensor | float:
    """CLIPScore from a text-image cosine: ``weight * max(cos, 0)`` (torchmetrics' scale: 0-100)."""
    if isinstance(cos, torch.Tensor):
        return weight * cos.clamp(min=0)
    return weight * max(float(cos), 0.0)


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile-bootstrap ``level`` interval.

    Resamples ``values`` with replacement ``resamples`` times (a fixed ``seed``, so a report is
    reproducible). One value gives ``(v, v, v)``; no values gives NaNs.
    """
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))  # [R, N]
    means = x[idx].mean(axis=1)  # [R]
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return mean, float(low), float(high)


def pareto_front(
    points: Sequence[tuple[float, float]], maximize: tuple[bool, bool] = (True, True)
) -> list[int]:
    """Indices of the points no other point dominates (at least as good on both axes, better on one).

    ``maximize`` says per axis whether higher is better (style vs leakage: ``(False, True)`` for
    x = leakage, y = style). NaN points are never on the front. Returned in ascending x order.
    """
    sign = np.array([1.0 if m else -1.0 for m in maximize])
    pts = [np.array(p, dtype=np.float64) * sign for p in points]
    front = []
    for i, p in enumerate(pts):
        if np.isnan(p).any():
            continue
        dominated = any(
            not np.isnan(q).any() and (q >= p).all() and (q > p).any() for j, q in enumerate(pts) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])
