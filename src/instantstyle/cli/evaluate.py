"""``instantstyle eval``: score outputs (style similarity, text alignment, leakage) or run a
benchmark manifest. The logic lives in ``instantstyle.metrics.runner``; this parses and reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import common, metric_options, options

EVAL_EXAMPLES = """\
examples:
  # score a folder of images made by `instantstyle generate` (parameters are read from each PNG)
  instantstyle eval outputs/ --references refs/

  # score a `compare` output directory
  instantstyle eval cmp/

  # run a benchmark manifest: generates what is missing (resumable), then scores (see docs/evaluation.md)
  instantstyle eval bench.json --out bench-run/

  # no weights needed: the tiny random models (the numbers are meaningless)
  instantstyle eval bench.json --out run/ --base tiny
"""


def register(sub) -> None:
    e = common.add_command(
        sub,
        "eval",
        run,
        help="score outputs: style similarity, text alignment, leakage",
        description="Score a folder of our PNGs, a `compare` output directory, or run a benchmark "
        "manifest (generating only what is missing), with CSD style similarity, CLIP-T "
        "text alignment and DINOv2 / CSD-content leakage. Writes report.md, report.json, "
        "summary.csv, scores.csv (mean and bootstrap 95% interval per setting) and "
        "plots (style vs leakage, style vs text with the Pareto front, best/worst grid). "
        "Needs the 'eval' extra for the plots. See docs/evaluation.md.",
        epilog=EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "source", metavar="PATH", help="a folder of PNGs, a compare output directory, or a manifest .json"
    )
    e.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where the report goes (default: PATH/eval for folders, PATH without .json for manifests; "
        "a manifest's images go to DIR/images)",
    )
    e.add_argument(
        "--references",
        default=None,
        metavar="DIR",
        help="folder holding the style images, when they are not where the PNGs' parameters say",
    )
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    metric_options.add_metric_args(e)
    options.add_model_args(e)


def run(args) -> int:
    from ..metrics.runner import evaluate

    scorer = metric_options.make_scorer(args)
    # the generation model loads only if a manifest's images are missing
    report = evaluate(
        args.source,
        args.out,
        scorer,
        references=args.references,
        load_model=lambda: options.load_model(args),
        progress=not args.quiet,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(Path(report["out"]) / "report.md")
    return 0 if report["images"] else 1
