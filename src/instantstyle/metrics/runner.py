"""``instantstyle eval``: score a folder of our PNGs, a ``compare`` output, or run a benchmark manifest.

Three sources, one report:
- a folder of PNGs written by this toolkit: each file's embedded parameters say its prompt, style
  references and method (references are found as recorded, beside the folder, or in
  ``--references DIR`` by file name or pixel hash);
- a ``compare`` output directory (its ``report.json`` names the style image and every single);
- a manifest (JSON, ``Manifest``): style images (with optional content descriptions), prompts,
  settings (a method and its options, with optional sweeps), seeds. Missing images are generated
  with the loaded model; existing ones are reused after checking they were made with the same
  parameters, so a run can be interrupted and resumed and a second run generates nothing.

Then every image is scored (``metrics.scorer``) and ``report.json`` / ``report.md`` /
``summary.csv`` / ``scores.csv`` and the plots are written to the output directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import methods as methods_mod
from ..config import GenerateRequest
from ..errors import InstantStyleError
from ..images import image_hash, load_image, read_metadata
from . import LEAKAGE, STYLE, TEXT
from .manifest import (  # noqa: F401 (re-exported: the manifest API lived here)
    IDENTITY,
    Job,
    Manifest,
    SettingSpec,
    StyleSpec,
    _bar,
    expand_manifest,
    read_manifest,
    run_manifest,
)
from .report import summarize, write_report, write_text
from .scorer import Item, Scorer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CHUNK = 64  # images decoded at a time while scoring


@dataclass
class Entry:
    """One image to score."""

    path: Path
    prompt: str
    references: list[Path]
    setting: str
    seed: int | None = None
    weights: list[float] | None = None
    params: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- folders of PNGs


def setting_label(params: dict) -> str:
    """A readable name for the settings of one output: its method and the options it changed."""
    method = params.get("method", "instantstyle")
    fields = GenerateRequest.model_fields
    parts = [method]
    if params.get("task") not in (None, "txt2img"):
        parts.append(str(params["task"]))
    options = methods_mod.METHODS[method].options if method in methods_mod.METHODS else ()
    for name in options:
        if name in (
            "reference_prompt",
            "b_lora",
            "content_prompt",
            "style_weights",
            "composition",
            "negative_style",
        ):
            continue  # differ per reference, not per setting
        default = fields[name].get_default(call_default_factory=True) if name in fields else None
        default = list(default) if isinstance(default, tuple) else default  # as JSON metadata holds it
        value = params.get(name)
        if value is not None and value != default:
            parts.append(f"{name}={value}")
    return " ".join(parts)


class ReferenceFinder:
    """Finds a style reference's image: as recorded, relative to a folder, or in ``--references`` DIR."""

    def __init__(self, roots: Sequence[Path], references: Path | None = None):
        self.roots = [Path(r) for r in roots]
        self.references = Path(references) if references is not None else None
        self._by_hash: dict[str, Path] | None = None

    def _index(self) -> dict[str, Path]:
        if self._by_hash is None:
            self._by_hash = {}
            if self.references is not None:
                for p in sorted(self.references.rglob("*")):
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                        try:
                            self._by_hash.setdefault(image_hash(load_image(p)), p)
                        except InstantStyleError:
                            continue  # not an image we can read: it cannot be a reference either
        return self._by_hash

    def find(self, recorded: str, sha256: str | None, owner: Path) -> Path:
        candidates = []
        if not recorded.startswith(("@", "<")):
            p = Path(recorded).expanduser()
            candidates += [p] if p.is_absolute() else [p, *(r / p for r in self.roots)]
            if self.references is not None:
                candidates.append(self.references / p.name)
        for c in candidates:
            if c.is_file():
                return c
        if sha256 and sha256 in self._index():
            return self._index()[sha256]
        hint = (
            "pass --references DIR holding the style images (found by file name or by their pixels)"
            if self.references is None
            else f"it is not in --references '{self.references}' either"
        )
        raise InstantStyleError(f"style reference {recorded!r} of '{owner}' was not found; {hint}")


def collect_folder(folder: Path, finder: ReferenceFinder) -> tuple[list[Entry], list[str]]:
    """Every PNG under ``folder`` carrying our parameters (sorted), and the names of those that do not."""
    entries, skipped = [], []
    for path in sorted(folder.rglob("*.png")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            params = read_metadata(path)
        except (InstantStyleError, OSError, ValueError):
            skipped.append(str(path.relative_to(folder)))
            continue
        styles = [str(s) for s in params.get("style") or []]
        hashes = list(params.get("style_image_sha256") or [])
        refs = [finder.find(s, hashes[i] if i < len(hashes) else None, path) for i, s in enumerate(styles)]
        entries.append(
            Entry(
                path,
                params.get("prompt", ""),
                refs,
                setting_label(params),
                params.get("seed"),
                params.get("style_weights"),
                params,
            )
        )
    return entries, skipped


def collect_compare(directory: Path, finder: ReferenceFinder) -> list[Entry]:
    """The singles of a ``compare`` output, each with the comparison's style image."""
    report = json.loads((directory / "report.json").read_text())
    style = finder.find(str(report.get("style", "")), report.get("style_sha256"), directory / "report.json")
    entries = []
    for method in report["methods"]:
        for rel in method["files"]:
            path = directory / rel
            params = read_metadata(path)
            entries.append(
                Entry(
                    path,
                    params.get("prompt", ""),
                    [style],
                    method["method"],
                    params.get("seed"),
                    None,
                    params,
                )
            )
    return entries


def is_compare_dir(path: Path) -> bool:
    if not (path / "report.json").is_file():
        return False
    try:
        report = json.loads((path / "report.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "methods" in report and "grid" in report


# ---------------------------------------------------------------------- scoring and the report


def score_entries(entries: Sequence[Entry], scorer: Scorer, *, progress: bool = True) -> list[dict]:
    """Per-image rows: ``setting``, ``file``, ``prompt``, ``seed``, ``style`` and every metric."""
    bar = _bar(len(entries), "scoring", progress)
    scores = []
    for start in range(0, len(entries), CHUNK):  # a benchmark's images never all sit in memory at once
        items = [
            Item(
                load_image(e.path, what="output image"),
                e.prompt,
                [load_image(r, what="style reference") for r in e.references],
                e.weights,
            )
            for e in entries[start : start + CHUNK]
        ]
        scores += scorer.score(items, progress=bar.update)
    bar.close()
    return [
        {
            "setting": e.setting,
            "file": str(e.path),
            "prompt": e.prompt,
            "seed": e.seed,
            "style": ";".join(str(r) for r in e.references),
            **s,
        }
        for e, s in zip(entries, scores, strict=True)
    ]


def write_outputs(
    out: Path,
    rows: list[dict],
    scorer: Scorer,
    source: str,
    *,
    counts: dict | None = None,
    extra: dict | None = None,
    plots: bool = True,
) -> dict:
    """Summaries, plots and report files in ``out``; returns the report."""
    from . import plots as plots_mod

    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, scorer.metrics)
    files = {}
    if plots and rows:
        have = set(scorer.metrics)
        if {STYLE, LEAKAGE} <= have:
            files["style vs leakage"] = plots_mod.scatter(
                summary, LEAKAGE, STYLE, out / "style_vs_leakage.png"
            ).name
        if {STYLE, TEXT} <= have:
            files["style vs text"] = plots_mod.scatter(summary, TEXT, STYLE, out / "style_vs_text.png").name
        metric = STYLE if STYLE in have else scorer.metrics[0]
        files["best and worst"] = plots_mod.examples(
            rows, lambda r: load_image(r["file"], what="output image"), metric, out / "best_worst.png"
        ).name
    report = {
        "source": source,
        "metrics": list(scorer.metrics),
        "metric_models": scorer.ids,
        "summary": summary,
        "images": rows,
        "plots": files,
        **({"counts": counts} if counts else {}),
        **(extra or {}),
    }
    write_report(out, report)
    return report


def evaluate(
    source: str | Path,
    out: str | Path | None,
    scorer: Scorer,
    *,
    references: str | Path | None = None,
    load_model: Callable[[], object] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """``instantstyle eval``: detect the source, generate what a manifest lacks, score, report."""
    # 1. What are we scoring? Check it all before loading any model.
    source = Path(source)
    refs = Path(references) if references is not None else None
    if refs is not None and not refs.is_dir():
        raise InstantStyleError(f"--references '{refs}' is not a directory")
    counts, extra = None, {}
    if source.is_file() and source.name == "report.json" and is_compare_dir(source.parent):
        source = source.parent
    if source.is_file() and source.suffix.lower() == ".json":
        manifest = read_manifest(source)
        out = Path(out) if out is not None else source.with_suffix("")
        jobs = expand_manifest(manifest, source.parent, out)
        out.mkdir(parents=True, exist_ok=True)
        write_text(
            out / "manifest.resolved.json",
            json.dumps({"manifest": str(source), **manifest.model_dump(), "jobs": len(jobs)}, indent=2),
        )
        if load_model is None:
            load_model = _no_model
        # 2. Generate what is missing (never regenerating what exists).
        counts = run_manifest(jobs, load_model, progress=progress, log=log)
        entries = [Entry(j.out, j.request.prompt, [j.style], j.setting, j.request.seed) for j in jobs]
    elif source.is_dir():
        finder = ReferenceFinder([source, Path.cwd()], refs)
        if is_compare_dir(source):
            entries = collect_compare(source, finder)
        else:
            entries, skipped = collect_folder(source, finder)
            if skipped:
                log(
                    f"eval: {len(skipped)} PNG(s) carry no instantstyle parameters and are not scored: "
                    + ", ".join(skipped[:5])
                    + (" ..." if len(skipped) > 5 else "")
                )
                extra["skipped"] = skipped
        out = Path(out) if out is not None else source / "eval"
    else:
        raise InstantStyleError(
            f"eval: '{source}' is neither a folder of PNGs, a compare output directory nor a "
            "manifest .json file"
        )
    if not entries:
        raise InstantStyleError(f"eval: no images to score in '{source}'")
    # 3. Score, 4. summarise, plot and write the report.
    extra["out"] = str(out)
    scorer.load()
    rows = score_entries(entries, scorer, progress=progress)
    report = write_outputs(Path(out), rows, scorer, str(source), counts=counts, extra=extra)
    log(
        f"eval: scored {len(rows)} image(s) in {len(report['summary'])} setting(s) -> {Path(out) / 'report.md'}"
    )
    return report


def _no_model():
    raise InstantStyleError("images are missing and no model was given to generate them")


# ---------------------------------------------------------------------- compare --metrics


def score_comparison(
    scorer: Scorer, reference, prompts: Sequence[str], columns: dict[str, list], *, progress: bool = False
) -> dict[str, dict]:
    """Per method: ``{"rows": [per-image scores], "summary": {metric: {mean, low, high}}}`` (compare --metrics)."""
    items, owners = [], []
    for method, images in columns.items():
        for prompt, image in zip(prompts, images, strict=True):
            items.append(Item(image, prompt, [reference]))
            owners.append(method)
    scorer.load()
    bar = _bar(len(items), "scoring", progress)
    scores = scorer.score(items, progress=bar.update)
    bar.close()
    rows = [{"setting": m, **s} for m, s in zip(owners, scores, strict=True)]
    summary = {s["setting"]: {m: s[m] for m in scorer.metrics} for s in summarize(rows, scorer.metrics)}
    return {m: {"rows": [r for r in rows if r["setting"] == m], "summary": summary[m]} for m in columns}


def short_scores(summary: dict) -> str:
    """``"style 0.61 text 0.27 leak 0.31"``: a method's means for a grid label."""
    names = {"csd_style": "style", "clip_t": "text", "dino_leakage": "leak", "csd_content": "content"}
    return " ".join(f"{names.get(m, m)} {v['mean']:.2f}" for m, v in summary.items())
