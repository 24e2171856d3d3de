"""Side-by-side comparison of generation methods: same base model, seed, prompt and settings.

``compare(model, style, prompts, out_dir, methods=...)`` writes ``grid.png`` (one column per method,
labelled; one row per prompt), every single image (``singles/METHOD-PROMPTINDEX.png``, with its
parameters embedded), and ``report.json`` / ``report.md`` with seconds per image and peak memory
per method, which methods ran and why any did not.

StyleAligned and Visual Style Prompting need a description of the style image
(``reference_prompt``). Without one, ``content_prompt`` (which names the reference's content for
InstantStyle's subtraction) is used when given, and the report says so; otherwise those methods
are left out with a one-line warning and a note in the report, and the rest still run.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from . import methods as methods_mod
from .config import GenerateRequest, make_request
from .errors import InstantStyleError
from .files import atomic_write_text
from .images import check_output_path, image_hash, load_image, save_png
from .seeds import pick_seed

DEFAULT_METHODS = ("instantstyle", "ip-adapter", "style-aligned", "visual-style-prompting")
# Settings every method reads; anything else goes only to the methods that list it as an option.
COMMON = ("negative_prompt", "steps", "guidance", "seed", "width", "height")
LABEL_PAD = 4


@dataclass
class Comparison:
    grid: Path
    singles: dict[str, list[Path]]
    report: dict


def parse_methods(spec: str | Sequence[str] | None, has_lora: bool) -> list[str]:
    """``"a,b,c"`` -> checked names; default: the four that need no training, plus b-lora with a LoRA."""
    if spec is None:
        return list(DEFAULT_METHODS) + (["b-lora"] if has_lora else [])
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise InstantStyleError(f"--methods is empty; give e.g. {','.join(DEFAULT_METHODS)}")
    for name in names:
        methods_mod.get(name)
    if len(set(names)) != len(names):
        raise InstantStyleError(f"--methods {','.join(names)}: a method is listed twice")
    return names


@dataclass
class Plan:
    """What ``compare`` runs: the methods, per-method setting overrides, and what was left out and why."""

    methods: list[str]
    overrides: dict[str, dict]
    skipped: dict[str, str]
    notes: list[str]


def plan(methods: Sequence[str], settings: dict) -> Plan:
    """Derive a reference prompt where that is sound, else leave the methods that need one out."""
    run, overrides, skipped, notes = [], {}, {}, []
    for name in methods:
        method = methods_mod.get(name)
        if method.reference != "image" or (settings.get("reference_prompt") or "").strip():
            run.append(name)
        elif (settings.get("content_prompt") or "").strip():
            run.append(name)
            overrides[name] = {"reference_prompt": settings["content_prompt"]}
        else:
            skipped[name] = (
                "needs --reference-prompt TEXT describing the style image (or --content-prompt, "
                "which is used for it); not run"
            )
    derived = [n for n in overrides if "reference_prompt" in overrides[n]]
    if derived:
        notes.append(
            f"{', '.join(derived)}: reference prompt taken from --content-prompt "
            f"{settings['content_prompt']!r} (no --reference-prompt given)"
        )
    if not run:
        raise InstantStyleError(
            "compare: no method left to run: " + "; ".join(f"{n} {r}" for n, r in skipped.items())
        )
    return Plan(run, overrides, skipped, notes)


def build_requests(
    methods: Sequence[str],
    prompts: Sequence[str],
    style: str | None,
    settings: dict,
    overrides: dict[str, dict] | None = None,
) -> dict[str, list[GenerateRequest]]:
    """One validated request per (method, prompt); fails before any model runs."""
    if not prompts:
        raise InstantStyleError("no --prompt given")
    unknown = set(settings) - set(COMMON) - {f for m in methods_mod.METHODS.values() for f in m.options}
    if unknown:
        raise InstantStyleError(f"compare: unknown setting(s) {sorted(unknown)}")
    out = {}
    for name in methods:
        method = methods_mod.get(name)
        params = {k: v for k, v in settings.items() if k in COMMON or k in method.options}
        params.update((overrides or {}).get(name, {}))
        if method.reference != "lora" and style is not None:
            params["style"] = [style]
        unused = sorted(
            k
            for k, v in settings.items()
            if k not in params
            and v is not None
            and not any(k in methods_mod.METHODS[m].options for m in methods)
        )
        if unused:
            raise InstantStyleError(
                f"compare: {', '.join(unused)} is read by none of --methods {','.join(methods)}"
            )
        try:
            out[name] = [make_request(prompt=p, method=name, num_images=1, **params) for p in prompts]
        except InstantStyleError as exc:  # compare has --methods, not --method
            why = str(exc).removeprefix("request: ").replace(f"--method {name} ", "")
            raise InstantStyleError(f"compare, method {name}: {why}") from None
    return out


def _peak_memory_start():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return ("cuda", 0)
    try:
        import resource

        return ("cpu", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except ImportError:  # not on Windows
        return ("n/a", 0)


def _peak_memory_end(start) -> tuple[float | None, str]:
    import torch

    kind, before = start
    if kind == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated (MiB)"
    if kind == "cpu":
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale / 2**20
        return grown, "growth of the process's peak RSS (MiB; 0 when it stayed under an earlier peak)"
    return None, "n/a"


def make_grid(rows: list[list[Image.Image]], column_labels: list[str], row_labels: list[str]):
    """Images ``rows[r][c]`` under a label strip (one label per column) with a prompt strip on the left.

    Returns ``(grid, boxes)``: ``boxes`` maps ``"column:<label>"`` / ``"row:<i>"`` to ``[x0, y0, x1, y1]``.
    """
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
        return x1 - x0, y1 - y0

    cell_w = max(
        max(im.width for row in rows for im in row), *(size(t)[0] + 2 * LABEL_PAD for t in column_labels)
    )
    cell_h = max(im.height for row in rows for im in row)
    row_texts = [t if len(t) <= 40 else t[:37] + "..." for t in row_labels]
    left = max(size(t)[0] for t in row_texts) + 2 * LABEL_PAD
    top = max(size(t)[1] for t in column_labels) + 2 * LABEL_PAD
    grid = Image.new("RGB", (left + cell_w * len(column_labels), top + cell_h * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    boxes = {}
    for c, label in enumerate(column_labels):
        x0 = left + c * cell_w
        box = [x0, 0, x0 + cell_w, top]
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(160, 160, 160))
        draw.text((x0 + LABEL_PAD, LABEL_PAD), label, fill="black", font=font)
        boxes[f"column:{label}"] = box
    for r, (row, text) in enumerate(zip(rows, row_texts, strict=True)):
        y0 = top + r * cell_h
        draw.text((LABEL_PAD, y0 + LABEL_PAD), text, fill="black", font=font)
        boxes[f"row:{r}"] = [0, y0, left, y0 + cell_h]
        for c, im in enumerate(row):
            grid.paste(im, (left + c * cell_w + (cell_w - im.width) // 2, y0 + (cell_h - im.height) // 2))
    return grid, boxes


def compare(
    model,
    style,
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    methods: Sequence[str] | None = None,
    settings: dict | None = None,
    overwrite: bool = False,
    log=print,
    scorer=None,
) -> Comparison:
    """Run every method on every prompt with the same seed and settings; write grid, singles, reports.

    With a ``metrics.scorer.Scorer``, every single is also scored against the style image and its
    prompt; the means go into the grid's column labels and the reports (``compare --metrics``).
    """
    settings = dict(settings or {})
    # 1. Check everything before any model runs: methods, requests, the style image, the outputs.
    wanted = parse_methods(methods, bool(settings.get("b_lora")))
    settings["seed"] = pick_seed(settings.get("seed"))  # one seed for every method
    style_path = str(style) if not isinstance(style, Image.Image) else None
    reference = load_image(style, what="style image", max_pixels=model.styles.max_pixels)
    chosen = plan(wanted, settings)
    methods = chosen.methods
    for name, reason in chosen.skipped.items():
        log(f"warning: {name} {reason}")
    for note in chosen.notes:
        log(f"note: {note}")
    requests = build_requests(methods, prompts, style_path, settings, chosen.overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "singles").mkdir(exist_ok=True)
    files = {m: [out / "singles" / f"{m}-{j}.png" for j in range(len(prompts))] for m in methods}
    for path in [out / "grid.png", out / "report.json", out / "report.md", *sum(files.values(), [])]:
        check_output_path(path, overwrite=overwrite)

    # 2. Run, timing each method and tracking its peak memory.
    results, columns = [], []
    for name in methods:
        method = methods_mod.get(name)
        mem = _peak_memory_start()
        images, t0 = [], time.perf_counter()
        for req in requests[name]:
            refs = [reference] if (method.reference != "lora" and style_path is None) else None
            images += model.generate(req, style_images=refs)
        seconds = time.perf_counter() - t0
        peak, peak_kind = _peak_memory_end(mem)
        for image, path in zip(images, files[name], strict=True):
            save_png(image, path, overwrite=overwrite)
        columns.append(images)
        results.append(
            {
                "method": name,
                "paper": method.paper,
                "summary": method.summary,
                "images": len(images),
                "seconds_total": round(seconds, 3),
                "seconds_per_image": round(seconds / len(images), 3),
                "peak_memory_mib": None if peak is None else round(peak, 1),
                "peak_memory_kind": peak_kind,
                "files": [str(p.relative_to(out)) for p in files[name]],
            }
        )
        log(f"{name}: {seconds / len(images):.2f} s/image")

    # 3. Scores (compare --metrics), the labelled grid and the reports.
    scores, labels = None, list(methods)
    if scorer is not None:
        from .metrics.runner import score_comparison, short_scores

        scores = score_comparison(scorer, reference, prompts, dict(zip(methods, columns, strict=True)))
        labels = [f"{name}\n{short_scores(scores[name]['summary'])}" for name in methods]
        for result in results:
            result["metrics"] = scores[result["method"]]["summary"]
            result["scores"] = [
                {k: v for k, v in row.items() if k != "setting"} for row in scores[result["method"]]["rows"]
            ]
    rows = [[columns[c][r] for c in range(len(methods))] for r in range(len(prompts))]
    grid, boxes = make_grid(rows, labels, list(prompts))
    save_png(grid, out / "grid.png", overwrite=overwrite)
    report = {
        "style": style_path or "<in-memory image>",
        "style_sha256": image_hash(reference),
        "prompts": list(prompts),
        "settings": {k: v for k, v in settings.items() if v is not None},
        "seed": settings["seed"],
        "models": model.ids,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "methods": results,
        "grid": {"file": "grid.png", "columns": list(methods), "label_boxes": boxes},
        "ran": list(methods),
        "not_run": dict(chosen.skipped),
        "notes": list(chosen.notes),
    }
    if scorer is not None:
        report["metrics"] = {"names": list(scorer.metrics), "models": scorer.ids}
    _write_text(out / "report.json", json.dumps(report, indent=2), overwrite)
    _write_text(out / "report.md", report_markdown(report), overwrite)
    return Comparison(out / "grid.png", files, report)


def report_markdown(report: dict) -> str:
    lines = [
        "# Method comparison\n",
        f"Style: `{report['style']}`; seed {report['seed']}; "
        f"device {report['device']} ({report['dtype']}); base `{report['models'].get('base')}`.\n",
        "Prompts:\n",
        *[f"{i}. {p}" for i, p in enumerate(report["prompts"])],
        "",
        "![grid](grid.png)\n",
        "| method | paper | images | s/image | peak memory (MiB) |",
        "|---|---|---|---|---|",
    ]
    for r in report["methods"]:
        mem = "n/a" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.1f}"
        lines.append(
            f"| {r['method']} | {r['paper']} | {r['images']} | {r['seconds_per_image']:.3f} | {mem} |"
        )
    kinds = {r["peak_memory_kind"] for r in report["methods"]}
    lines += ["", f"Peak memory: {'; '.join(sorted(kinds))}.", ""]
    if report.get("metrics"):
        from .metrics.report import markdown_table

        names = report["metrics"]["names"]
        summary = [{"method": r["method"], "n": r["images"], **r["metrics"]} for r in report["methods"]]
        lines += [
            "Scores (mean over the prompts, bootstrap 95% interval; docs/evaluation.md):",
            "",
            *markdown_table(summary, names, key="method"),
            "",
        ]
    lines += [f"Ran: {', '.join(report['ran'])}.", ""]
    if report["not_run"]:
        lines += ["Not run:", *[f"- {name}: {reason}" for name, reason in report["not_run"].items()], ""]
    if report["notes"]:
        lines += ["Notes:", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(lines)


def _write_text(path: Path, text: str, overwrite: bool) -> None:
    check_output_path(path, overwrite=overwrite)
    atomic_write_text(path, text)
