"""Command line of the evaluation: ``instantstyle eval``, ``instantstyle probe-blocks`` and the metric
flags ``instantstyle compare --metrics`` shares. ``cli.py`` only registers them.

The logic lives in ``instantstyle.metrics`` (``runner.evaluate``, ``probe.probe_blocks``); this
module parses flags and prints where the results went. The generation model comes from ``cli.py``'s
loader (the same model flags as ``generate``), passed in as ``load_model``.
"""

from __future__ import annotations

import argparse
import sys

from .errors import InstantStyleError

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

PROBE_EXAMPLES = """\
examples:
  # which attention module of this base carries style, and which layout?
  instantstyle probe-blocks --style ref.png --prompt "a cat" --prompt "a house" --seed 0 --seed 1 --out probe/
  # one transformer layer at a time (SDXL: 10 layers in each of the deepest modules)
  instantstyle probe-blocks --style ref.png --prompt "a cat" --layers --out probe-layers/
"""


def add_metric_args(p: argparse.ArgumentParser, *, with_metrics_flag: bool = False) -> None:
    """``--metrics``, the three metric models and their device."""
    from .metrics import DEFAULT_METRICS
    from .metrics.clip_t import DEFAULT_CLIP
    from .metrics.csd import DEFAULT_CSD
    from .metrics.dino import DEFAULT_DINO

    g = p.add_argument_group("metrics (models: local path, Hub 'owner/repo[/path]', or 'tiny')")
    if with_metrics_flag:
        g.add_argument("--metrics", nargs="?", const=",".join(DEFAULT_METRICS), default=None, metavar="A,B",
                       help="score every output and add the scores to the grid and the reports (default when "
                            f"given without a list: {','.join(DEFAULT_METRICS)})")
    else:
        g.add_argument("--metrics", default=",".join(DEFAULT_METRICS), metavar="A,B",
                       help="csd_style (style similarity, CSD), clip_t (text alignment, CLIP-T), dino_leakage "
                            "(content leakage, DINOv2), csd_content (content leakage, CSD content head) "
                            "(default: %(default)s)")
    g.add_argument("--csd", default=None, help=f"CSD checkpoint (default: {DEFAULT_CSD}; 'tiny' with --base tiny)")
    g.add_argument("--clip", default=None, help=f"CLIP model for CLIP-T (default: {DEFAULT_CLIP})")
    g.add_argument("--dino", default=None, help=f"DINOv2 model for leakage (default: {DEFAULT_DINO})")
    g.add_argument("--metrics-device", default=None, help="device of the metric models (default: --device's)")


def make_scorer(args, metrics: str | None = None):
    from .metrics import parse_metrics
    from .metrics.scorer import Scorer

    tiny = getattr(args, "base", None) == "tiny"
    pick = {k: getattr(args, k) or ("tiny" if tiny else None) for k in ("csd", "clip", "dino")}
    device = args.metrics_device or getattr(args, "device", None)
    dtype = getattr(args, "dtype", None)
    return Scorer(parse_metrics(metrics or args.metrics), device=device, dtype=dtype, **pick)


def add_parsers(sub, common, add_model_args) -> None:
    e = sub.add_parser("eval", parents=[common], help="score outputs: style similarity, text alignment, leakage",
                       description="Score a folder of our PNGs, a `compare` output directory, or run a benchmark "
                                   "manifest (generating only what is missing), with CSD style similarity, CLIP-T "
                                   "text alignment and DINOv2 / CSD-content leakage. Writes report.md, report.json, "
                                   "summary.csv, scores.csv (mean and bootstrap 95% interval per setting) and "
                                   "plots (style vs leakage, style vs text with the Pareto front, best/worst grid). "
                                   "Needs the 'eval' extra for the plots. See docs/evaluation.md.",
                       epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("source", metavar="PATH", help="a folder of PNGs, a compare output directory, or a manifest .json")
    e.add_argument("--out", default=None, metavar="DIR",
                   help="where the report goes (default: PATH/eval for folders, PATH without .json for manifests; "
                        "a manifest's images go to DIR/images)")
    e.add_argument("--references", default=None, metavar="DIR",
                   help="folder holding the style images, when they are not where the PNGs' parameters say")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    add_metric_args(e)
    add_model_args(e)

    p = sub.add_parser("probe-blocks", parents=[common], help="find the style and layout blocks of a UNet",
                       description="Inject the style references into one cross-attention module at a time (with "
                                   "--layers: one transformer layer at a time), generate each prompt x seed, and "
                                   "score style similarity and content leakage per unit against a no-injection "
                                   "baseline. Writes probe.md/.json/.csv, heatmap.png and the images, and prints "
                                   "the recommended --blocks spec for style and for layout.",
                       epilog=PROBE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--style", action="append", required=True, metavar="IMG", help="style reference; repeat for several")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT", help="repeat for several")
    p.add_argument("--seed", action="append", type=int, default=None, metavar="N", help="repeat (default: 0)")
    p.add_argument("--layers", action="store_true", help="probe every transformer layer instead of every module")
    p.add_argument("--scale", type=float, default=1.0, help="adapter scale in the probed unit (default: %(default)s)")
    p.add_argument("--steps", default=None, metavar="N", help="denoising steps (default: 30)")
    p.add_argument("--guidance", default=None, metavar="F", help="guidance scale (default: 5.0)")
    p.add_argument("--width", default=None, metavar="W")
    p.add_argument("--height", default=None, metavar="H")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_metric_args(p)
    add_model_args(p)


def cmd_eval(args, load_model) -> int:
    """``load_model()`` loads the generation model (called only if a manifest's images are missing)."""
    from pathlib import Path

    from .metrics.runner import evaluate

    scorer = make_scorer(args)
    report = evaluate(args.source, args.out, scorer, references=args.references, load_model=load_model,
                      progress=not args.quiet, log=lambda msg: print(msg, file=sys.stderr))
    print(Path(report["out"]) / "report.md")
    return 0 if report["images"] else 1


def cmd_probe_blocks(args, load_model) -> int:
    from .metrics.probe import probe_blocks

    scorer = make_scorer(args)
    if "csd_style" not in scorer.metrics:
        raise InstantStyleError("probe-blocks needs csd_style in --metrics")
    settings = {k: getattr(args, k) for k in ("steps", "guidance", "width", "height") if getattr(args, k) is not None}
    scorer.load()  # a missing metric model fails before the base model loads
    model = load_model()
    result = probe_blocks(model, args.style, args.prompt, scorer, args.out, seeds=args.seed or [0], layers=args.layers,
                          scale=args.scale, settings=settings, overwrite=args.overwrite, progress=not args.quiet,
                          log=lambda msg: print(msg, file=sys.stderr))
    for kind, spec in result.recommended.items():
        print(f"{kind}: --blocks {spec}")
    print(result.files["md"])
    return 0
