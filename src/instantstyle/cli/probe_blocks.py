"""``instantstyle probe-blocks``: inject the style into one unit at a time and score it, to find
a UNet's style and layout blocks (the logic lives in ``instantstyle.metrics.probe``)."""

from __future__ import annotations

import argparse
import sys

from ..errors import InstantStyleError
from . import common, metric_options, options

SETTINGS = ["steps", "guidance", "width", "height"]  # request fields every probed generation shares

PROBE_EXAMPLES = """\
examples:
  # which attention module of this base carries style, and which layout?
  instantstyle probe-blocks --style ref.png --prompt "a cat" --prompt "a house" --seed 0 --seed 1 --out probe/
  # one transformer layer at a time (SDXL: 10 layers in each of the deepest modules)
  instantstyle probe-blocks --style ref.png --prompt "a cat" --layers --out probe-layers/
"""


def register(sub) -> None:
    p = common.add_command(
        sub,
        "probe-blocks",
        run,
        help="find the style and layout blocks of a UNet",
        description="Inject the style references into one cross-attention module at a time (with "
        "--layers: one transformer layer at a time), generate each prompt x seed, and "
        "score style similarity and content leakage per unit against a no-injection "
        "baseline. Writes probe.md/.json/.csv, heatmap.png and the images, and prints "
        "the recommended --blocks spec for style and for layout.",
        epilog=PROBE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--style", action="append", required=True, metavar="IMG", help="style reference; repeat for several"
    )
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT", help="repeat for several")
    p.add_argument("--seed", action="append", type=int, default=None, metavar="N", help="repeat (default: 0)")
    p.add_argument(
        "--layers", action="store_true", help="probe every transformer layer instead of every module"
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="adapter scale in the probed unit (default: %(default)s)"
    )
    options.add_request_args(p, SETTINGS)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    metric_options.add_metric_args(p)
    options.add_model_args(p)


def run(args) -> int:
    from ..metrics.probe import probe_blocks

    scorer = metric_options.make_scorer(args)
    if "csd_style" not in scorer.metrics:
        raise InstantStyleError("probe-blocks needs csd_style in --metrics")
    settings = {k: getattr(args, k) for k in SETTINGS if getattr(args, k) is not None}
    scorer.load()  # a missing metric model fails before the base model loads
    model = options.load_model(args)
    result = probe_blocks(
        model,
        args.style,
        args.prompt,
        scorer,
        args.out,
        seeds=args.seed or [0],
        layers=args.layers,
        scale=args.scale,
        settings=settings,
        overwrite=args.overwrite,
        progress=not args.quiet,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    for kind, spec in result.recommended.items():
        print(f"{kind}: --blocks {spec}")
    print(result.files["md"])
    return 0
