"""``instantstyle compare``: every method with the same seed and settings, one labelled grid."""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from . import common, metric_options, options

SHARED = ["negative_prompt", "steps", "guidance", "seed", "width", "height"]
INSTANTSTYLE = ["scale", "content_prompt", "content_scale"]


def register(sub) -> None:
    c = common.add_command(
        sub,
        "compare",
        run,
        help="run several methods side by side and write a labelled grid",
        description="Run every method with the same seed and settings on one style image and one "
        "or more prompts. Writes DIR/grid.png (a column per method, a row per prompt), "
        "DIR/singles/METHOD-I.png, DIR/report.json and DIR/report.md (seconds per "
        "image, peak memory).",
        epilog="example:\n  instantstyle compare --style ref.png --prompt 'a lighthouse' --prompt "
        "'a cat' \\\n      --reference-prompt 'a watercolour harbour' --seed 42 --out cmp/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--style", required=True, metavar="IMG", help="the style image (one)")
    c.add_argument("--prompt", action="append", required=True, metavar="TEXT", help="repeat for several rows")
    c.add_argument(
        "--methods",
        default=None,
        metavar="A,B,...",
        help="comma-separated (default: instantstyle,ip-adapter,style-aligned,visual-style-prompting, "
        "plus b-lora when --b-lora is given)",
    )
    c.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    c.add_argument("--overwrite", action="store_true", help="replace existing outputs in DIR")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    options.add_request_args(c.add_argument_group("settings shared by every method"), SHARED)
    options.add_request_args(c.add_argument_group("instantstyle / ip-adapter options"), INSTANTSTYLE)
    options.add_method_args(c)
    options.add_model_args(c)
    metric_options.add_metric_args(c, with_metrics_flag=True)  # compare --metrics


def run(args) -> int:
    from ..compare import build_requests, compare, parse_methods, plan

    # 1. Validate methods, settings and every request before loading anything.
    settings = {k: getattr(args, k) for k in SHARED + INSTANTSTYLE if getattr(args, k) is not None}
    settings.update(options.method_params(args))
    settings.setdefault("seed", str(secrets.randbelow(2**31)))
    methods = parse_methods(args.methods, bool(settings.get("b_lora")))
    from .. import preflight
    from ..images import load_image

    chosen = plan(methods, settings)
    requests = build_requests(chosen.methods, args.prompt, args.style, settings, chosen.overrides)
    common.preflight(
        args,
        [lambda: load_image(args.style, what="style image")],
        preflight.needs_for_model(
            args.base, args.adapter, args.image_encoder, content_text_encoder=args.content_text_encoder
        ),
        tryout=common.TRYOUT,
    )
    for reqs in requests.values():
        options.check_lora(args.base, reqs[0])
        settings.update({k: getattr(reqs[0], k) for k in settings if k in reqs[0].model_fields_set})  # typed
    scorer = None
    if args.metrics is not None:  # the metric models load (or fail, naming their fetch) before SDXL
        scorer = metric_options.make_scorer(args).load()
    # 2. Load models once, 3. run every method, 4. write grid, singles and reports.
    model = options.load_model(args)
    result = compare(
        model,
        args.style,
        args.prompt,
        args.out,
        methods=methods,
        settings=settings,
        overwrite=args.overwrite,
        log=lambda msg: print(msg, file=sys.stderr),
        scorer=scorer,
    )
    print(result.grid)
    print(Path(args.out) / "report.md")
    return 0
