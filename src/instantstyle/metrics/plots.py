"""The evaluation's plots (matplotlib, written as PNG without pyplot's global state).

- ``scatter``: one point per setting (its mean, with the 95% interval as error bars) on two metrics,
  the Pareto front (settings no other setting beats on both axes) joined and marked;
- ``examples``: the best and the worst outputs by one metric, with their scores;
- ``heatmap``: a rows x metrics table coloured per column (the block probe).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import InstantStyleError
from ..files import atomic_write
from . import METRICS
from .maths import pareto_front


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InstantStyleError(
            "plots need matplotlib, in the 'eval' extra: pip install 'instantstyle[eval]'"
        ) from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> Path:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def scatter(summary: Sequence[dict], x: str, y: str, path: Path, *, key: str = "setting") -> Path:
    """Settings' means of metric ``x`` against metric ``y`` with 95% error bars and the Pareto front."""
    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot()
    points = [(s[x]["mean"], s[y]["mean"]) for s in summary]
    front = set(pareto_front(points, (METRICS[x].higher_is_better, METRICS[y].higher_is_better)))
    for i, s in enumerate(summary):
        mx, my = points[i]
        xerr = [[mx - s[x]["low"]], [s[x]["high"] - mx]]
        yerr = [[my - s[y]["low"]], [s[y]["high"] - my]]
        ax.errorbar(
            [mx],
            [my],
            xerr=xerr,
            yerr=yerr,
            fmt="o",
            capsize=3,
            color="tab:red" if i in front else "tab:blue",
            alpha=0.9,
        )
        ax.annotate(str(s[key]), (mx, my), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ordered = sorted(front, key=lambda i: points[i][0])
    if len(ordered) > 1:
        ax.plot(
            [points[i][0] for i in ordered],
            [points[i][1] for i in ordered],
            "--",
            color="tab:red",
            label="Pareto front",
        )
        ax.legend(loc="best", fontsize=8)
    arrow = {True: "higher is better", False: "lower is better"}
    ax.set_xlabel(f"{METRICS[x].label} ({arrow[METRICS[x].higher_is_better]})")
    ax.set_ylabel(f"{METRICS[y].label} ({arrow[METRICS[y].higher_is_better]})")
    ax.set_title(f"{METRICS[y].label} vs {METRICS[x].label}; red: Pareto-optimal", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def examples(
    rows: Sequence[dict], load: Callable[[dict], object], metric: str, path: Path, k: int = 4
) -> Path:
    """Top row: the ``k`` best outputs by ``metric``; bottom row: the ``k`` worst (each captioned).

    ``load(row)`` gives a row's image; only the ``2k`` shown are loaded. NaN scores are never shown.
    """
    scored = [i for i in range(len(rows)) if rows[i][metric] == rows[i][metric]]
    order = sorted(scored, key=lambda i: rows[i][metric], reverse=METRICS[metric].higher_is_better)
    k = max(1, min(k, len(order)))
    picks = [("best", order[:k]), ("worst", order[::-1][:k])]
    fig = _figure(2.4 * k, 5.6)
    axes = fig.subplots(2, k, squeeze=False)
    for r, (label, idx) in enumerate(picks):
        for c in range(k):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(idx):
                i = idx[c]
                ax.imshow(load(rows[i]))
                ax.set_title(
                    f"{label}: {rows[i][metric]:.3f}\n{str(rows[i].get('setting', ''))[:28]}", fontsize=7
                )
    fig.suptitle(f"best and worst outputs by {METRICS[metric].label}", fontsize=10)
    return _save(fig, path)


def heatmap(
    labels: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float]], path: Path, title: str
) -> Path:
    """``values[row][col]`` as a table, coloured per column (min to max), each cell annotated."""
    import numpy as np

    data = np.asarray(values, dtype=np.float64)  # [rows, cols]
    lo, hi = np.nanmin(data, axis=0), np.nanmax(data, axis=0)
    norm = (data - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    fig = _figure(1.6 + 1.5 * len(columns), 1.0 + 0.35 * len(labels))
    ax = fig.add_subplot()
    ax.imshow(norm, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(columns)), labels=list(columns), fontsize=8, rotation=20, ha="right")
    ax.set_yticks(range(len(labels)), labels=list(labels), fontsize=7)
    for r in range(data.shape[0]):
        for c in range(data.shape[1]):
            ax.text(
                c,
                r,
                f"{data[r, c]:.3f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[r, c] < 0.5 else "black",
            )
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
