"""Per-setting summaries (mean and bootstrap 95% interval of every metric) and the report files.

``summarize(rows, metrics)`` groups per-image score rows by their ``setting``; ``write_report``
writes ``report.json`` (everything), ``report.md`` (tables and plots), ``summary.csv`` (one row per
setting) and ``scores.csv`` (one row per image), each atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from ..files import atomic_write_text
from . import METRICS
from .maths import bootstrap_ci


def summarize(rows: Sequence[dict], metrics: Sequence[str], key: str = "setting") -> list[dict]:
    """``[{"setting", "n", "<metric>": {"mean", "low", "high", "n"}}]`` in first-seen setting order.

    NaN scores (an output with nothing to compare with) are left out of that metric's interval.
    """
    order: list[str] = []
    groups: dict[str, list[dict]] = {}
    for row in rows:
        name = str(row[key])
        if name not in groups:
            order.append(name)
            groups[name] = []
        groups[name].append(row)
    out = []
    for name in order:
        entry = {key: name, "n": len(groups[name])}
        for metric in metrics:
            values = [r[metric] for r in groups[name] if not math.isnan(r[metric])]
            mean, low, high = bootstrap_ci(values)
            entry[metric] = {"mean": mean, "low": low, "high": high, "n": len(values)}
        out.append(entry)
    return out


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def markdown_table(summary: Sequence[dict], metrics: Sequence[str], key: str = "setting") -> list[str]:
    head = [key, "n"] + [f"{METRICS[m].label} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [f"`{s[key]}`", str(s["n"])]
        cells += [f"{_fmt(s[m]['mean'])} [{_fmt(s[m]['low'])}, {_fmt(s[m]['high'])}]" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report_markdown(report: dict) -> str:
    metrics = report["metrics"]
    lines = [
        "# Evaluation\n",
        f"Source: `{report['source']}`; {len(report['images'])} images; "
        f"metric models: {', '.join(f'{k} `{v}`' for k, v in report['metric_models'].items())}.\n",
    ]
    if report.get("counts"):
        c = report["counts"]
        lines.append(f"Images generated this run: {c['generated']}; reused: {c['reused']}.\n")
    lines.append(
        "Mean per setting, with the bootstrap 95% interval of the mean in brackets "
        "(↑ higher is better, ↓ lower is better):\n"
    )
    lines += markdown_table(report["summary"], metrics)
    lines.append("")
    for name, file in report.get("plots", {}).items():
        lines += [f"## {name}\n", f"![{name}]({file})\n"]
    lines += ["What the numbers mean, and how they compare with published ones: docs/evaluation.md.", ""]
    return "\n".join(lines)


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buf.getvalue()


def summary_rows(
    summary: Sequence[dict], metrics: Sequence[str], key: str = "setting"
) -> tuple[list[dict], list[str]]:
    cols = [key, "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "low", "high")]
    rows = [
        {key: s[key], "n": s["n"], **{f"{m}_{k}": s[m][k] for m in metrics for k in ("mean", "low", "high")}}
        for s in summary
    ]
    return rows, cols


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` atomically (a temporary file beside it, then a rename)."""
    return atomic_write_text(path, text)


def write_report(out: Path, report: dict) -> dict[str, Path]:
    """``report.json``, ``report.md``, ``summary.csv`` and ``scores.csv`` in ``out``."""
    metrics = report["metrics"]
    rows, cols = summary_rows(report["summary"], metrics)
    image_cols = ["setting", "file", "prompt", "seed", "style"] + list(metrics)
    return {
        "json": write_text(out / "report.json", json.dumps(report, indent=2, default=str)),
        "md": write_text(out / "report.md", report_markdown(report)),
        "summary_csv": write_text(out / "summary.csv", csv_text(rows, cols)),
        "scores_csv": write_text(out / "scores.csv", csv_text(report["images"], image_cols)),
    }
