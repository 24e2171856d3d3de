"""``instantstyle probe-blocks``: which attention blocks of a UNet carry style, and which carry layout.

InstantStyle found its blocks by injecting the reference into one attention block at a time and
looking at the results (arXiv 2404.02733, Sec. 3.3 and Fig. 7; InstantStyle issue #38). This does
the same and measures it: for every cross-attention module of the loaded UNet (``--layers``: every
transformer layer), it generates each prompt x seed with the IP-Adapter in that unit only, and
scores the outputs against the references (``metrics.scorer``). A baseline with no injection
gives the zero point; each unit's effect is its difference from the baseline.

Recommendation: the ``style`` unit is the one whose injection raises style similarity most
without raising content leakage (largest ``d_style - d_leakage``); the ``layout`` unit is, of the
others, the one that carries most of the reference's content and structure (largest
``d_leakage``). Both are written as a ``--blocks`` spec to paste. The unit names come from
``blocks.discover`` on the loaded model, so any family the toolkit loads is probed by its own names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import blocks
from ..config import make_request
from ..errors import InstantStyleError
from ..images import check_output_path, load_image, save_png
from . import LEAKAGE, METRICS, STYLE
from .report import csv_text, write_text
from .scorer import Item, Scorer

BASELINE = "(none)"


@dataclass
class ProbeResult:
    rows: list[dict]  # one per unit (baseline first): unit, n, each metric's mean, d_<metric>
    recommended: dict[str, str]  # {"style": spec, "layout": spec, "style+layout": spec}
    files: dict[str, Path]


def probe_units(modules: Sequence[blocks.AttentionModule], layers: bool = False) -> list[str]:
    """The units to probe: every cross-attention module, or every transformer layer of each."""
    if not layers:
        return [m.name for m in modules]
    return [
        m.layer_name(i)
        for m in modules
        for i in range(m.layers)
        if f"{m.layer_name(i)}.attn2.processor" in m.processors
    ]


def recommend(rows: Sequence[dict], style_metric: str = STYLE, leak_metric: str = LEAKAGE) -> dict[str, str]:
    """The style and layout units from per-unit deltas (see the module docstring) as ``--blocks`` specs."""
    units = [r for r in rows if r["unit"] != BASELINE]
    if not units:
        return {}

    def gain(r):
        value = r[f"d_{style_metric}"] - r.get(f"d_{leak_metric}", 0.0)
        return -math.inf if math.isnan(value) else value

    style = max(units, key=gain)
    out = {"style": f"{style['unit']}=1.0"}
    others = [r for r in units if r is not style and not math.isnan(r.get(f"d_{leak_metric}", math.nan))]
    if others:
        layout = max(others, key=lambda r: r[f"d_{leak_metric}"])
        out["layout"] = f"{layout['unit']}=1.0"
        out["style+layout"] = f"{style['unit']}=1.0,{layout['unit']}=1.0"
    return out


def probe_blocks(
    model,
    references: Sequence[str | Path],
    prompts: Sequence[str],
    scorer: Scorer,
    out_dir: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    layers: bool = False,
    scale: float = 1.0,
    settings: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_run: Callable[[str, object], None] | None = None,
    log: Callable[[str], None] = print,
) -> ProbeResult:
    """Probe every unit of ``model``'s UNet; write images, ``probe.json``/``.md``/``.csv`` and ``heatmap.png``.

    ``on_run(unit, request)`` is called after each generation (tests use it to check that exactly
    one unit received the reference).
    """
    from . import plots
    from .runner import _bar

    # 1. Units, requests and outputs, all checked before anything runs.
    if "csd_style" not in scorer.metrics:
        raise InstantStyleError("probe-blocks needs the csd_style metric (--metrics must include it)")
    if not prompts:
        raise InstantStyleError("probe-blocks: give at least one --prompt")
    refs = [load_image(r, what="style image") for r in references]
    if not refs:
        raise InstantStyleError("probe-blocks: give at least one --style image")
    units = probe_units(blocks.discover(model.pipe.unet), layers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    base = dict(settings or {})
    runs = []  # (unit, prompt index, seed, request, path)
    for unit in [BASELINE, *units]:
        for p_idx, prompt in enumerate(prompts):
            for seed in seeds:
                params = {
                    **base,
                    "prompt": prompt,
                    "seed": seed,
                    "style": [str(r) for r in references],
                    "method": "instantstyle",
                    "num_images": 1,
                }
                params["blocks"] = f"{unit}={scale}" if unit != BASELINE else f"full={0.0}"
                req = make_request(**params)
                model.resolve_scales(req)  # a unit this model lacks fails here
                name = "baseline" if unit == BASELINE else unit
                runs.append(
                    (
                        unit,
                        p_idx,
                        seed,
                        req,
                        check_output_path(
                            out / "images" / f"{name}-p{p_idx}-s{seed}.png", overwrite=overwrite
                        ),
                    )
                )
    for name in ("probe.json", "probe.md", "probe.csv", "heatmap.png"):
        check_output_path(out / name, overwrite=overwrite)
    scorer.load()

    # 2. Generate one unit at a time and score against the references.
    bar = _bar(len(runs), "probing", progress)
    per_unit: dict[str, list[dict]] = {}
    for unit, p_idx, _seed, req, path in runs:
        image = model.generate(req)[0]
        if on_run is not None:
            on_run(unit, req)
        save_png(image, path, overwrite=overwrite)
        score = scorer.score([Item(image, prompts[p_idx], refs)])[0]
        per_unit.setdefault(unit, []).append(score)
        bar.update(1)
    bar.close()

    # 3. Means, deltas from the baseline, the recommendation, the files.
    rows = []
    for unit in [BASELINE, *units]:
        scores = per_unit[unit]
        row = {"unit": unit, "n": len(scores)}
        for m in scorer.metrics:
            values = [s[m] for s in scores if not math.isnan(s[m])]
            row[m] = sum(values) / len(values) if values else math.nan
        rows.append(row)
    for row in rows:
        for m in scorer.metrics:
            row[f"d_{m}"] = row[m] - rows[0][m]
    leak = (
        LEAKAGE if LEAKAGE in scorer.metrics else ("csd_content" if "csd_content" in scorer.metrics else None)
    )
    recommended = recommend(rows, STYLE, leak) if leak else recommend_style_only(rows)
    files = _write(
        out,
        rows,
        scorer.metrics,
        recommended,
        layers,
        scale,
        [str(r) for r in references],
        prompts,
        seeds,
        scorer.ids,
        plots,
    )
    log(
        f"probe-blocks: recommended --blocks {recommended.get('style', '?')} (style); "
        f"{recommended.get('layout', '?')} (layout) -> {files['md']}"
    )
    return ProbeResult(rows, recommended, files)


def recommend_style_only(rows: Sequence[dict]) -> dict[str, str]:
    units = [r for r in rows if r["unit"] != BASELINE]
    best = max(units, key=lambda r: r[f"d_{STYLE}"])
    return {"style": f"{best['unit']}=1.0"}


def _write(
    out: Path, rows, metrics, recommended, layers, scale, references, prompts, seeds, metric_models, plots
):
    kind = "transformer layer" if layers else "attention module"
    columns = ["unit", "n", *metrics, *(f"d_{m}" for m in metrics)]
    report = {
        "unit": kind,
        "scale": scale,
        "references": references,
        "prompts": list(prompts),
        "seeds": list(seeds),
        "metric_models": metric_models,
        "rows": rows,
        "recommended": recommended,
    }
    lines = [
        "# Block probe\n",
        f"The reference injected into one {kind} at a time (scale {scale}); {len(prompts)} "
        f"prompt(s) x {len(seeds)} seed(s); `{BASELINE}` = no injection. `d_` columns: difference from it.\n",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                f"`{r[c]}`" if c == "unit" else (str(r[c]) if c == "n" else f"{r[c]:.3f}") for c in columns
            )
            + " |"
        )
    lines += ["", "Recommended (paste into `instantstyle generate`):", ""]
    lines += [f"- {k}: `--blocks {v}`" for k, v in recommended.items()]
    lines += ["", "![heatmap](heatmap.png)", ""]
    labels = [r["unit"] for r in rows]
    cols = [f"{METRICS[m].label} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in metrics]
    heat = plots.heatmap(
        labels,
        cols,
        [[r[m] for m in metrics] for r in rows],
        out / "heatmap.png",
        f"per-{kind} injection: mean scores (colour per column)",
    )
    return {
        "json": write_text(out / "probe.json", json.dumps(report, indent=2)),
        "md": write_text(out / "probe.md", "\n".join(lines)),
        "csv": write_text(out / "probe.csv", csv_text(rows, columns)),
        "heatmap": heat,
    }
