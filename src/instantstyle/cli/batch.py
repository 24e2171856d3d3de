"""``instantstyle batch MANIFEST --out DIR``: every row of a manifest, resumable, on one process,
``accelerate launch`` ranks or a Ray cluster (``instantstyle.batch``; docs/batch.md)."""

from __future__ import annotations

import argparse
import contextlib
import signal

from . import common, options

EXAMPLES = """\
examples:
  # every row of a JSONL/CSV/Parquet manifest (the fields of `generate`), or a product spec (.json)
  instantstyle batch rows.jsonl --out run/
  instantstyle batch rows.jsonl --out run/            # again: finished rows are skipped, failed ones retried
  instantstyle batch campaign.json --out run/ --batch-size 4    # seeds of one prompt share a call

  # one process per GPU, any number of nodes (rows sharded across ranks)
  accelerate launch --multi_gpu --num_processes 8 -m instantstyle batch rows.jsonl --out run/

  # a Ray cluster: one actor per GPU, each holding the model (pip install 'instantstyle[batch]')
  instantstyle batch rows.jsonl --out /shared/run --engine ray --address ray://head:10001

  # no weights needed: the tiny random model (its images are noise)
  instantstyle batch rows.jsonl --out run/ --base tiny
"""


def register(sub) -> None:
    p = common.add_command(
        sub,
        "batch",
        run,
        help="run every row of a manifest (resumable; accelerate and Ray for many GPUs)",
        description="Generate one request per manifest row (JSONL, CSV or Parquet with the fields of `generate` "
        "as columns, or a product spec: styles x prompts x settings x seeds). Images go to "
        "OUT/images/ID.png with their full parameters, results to OUT/results.jsonl and "
        "OUT/results.parquet. Each row's ID comes from its content: running the same command again "
        "skips finished rows and redoes failed or changed ones. Exit status 1 when some rows failed. "
        "--speed auto compiles the UNet on CUDA, as `serve` does: a batch makes many images.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "manifest",
        metavar="MANIFEST",
        help="rows.jsonl | rows.csv | rows.parquet | product.json (relative image paths are relative "
        "to its folder; see docs/batch.md)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created if missing; reused to resume)"
    )
    run_group = p.add_argument_group("running")
    run_group.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="N",
        help="images per pipeline call for rows equal but for the seed (text-to-image); same "
        "images as one at a time, faster on a GPU (default: 1)",
    )
    run_group.add_argument(
        "--retries",
        type=int,
        default=1,
        metavar="N",
        help="extra attempts for a failing row (default: 1); a failed row never stops the run",
    )
    run_group.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "local", "accelerate", "ray"],
        help="where rows run: local = this process; accelerate = one process per GPU under "
        "`accelerate launch`/torchrun; ray = Ray Data actors on a cluster; auto = "
        "accelerate when started by a distributed launcher, else local (default: auto)",
    )
    run_group.add_argument(
        "--address",
        default=None,
        help="Ray cluster address, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS, else a "
        "local Ray for this run)",
    )
    run_group.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="Ray actors, each holding one model (default: one per GPU of the cluster, else 1)",
    )
    run_group.add_argument(
        "--no-cache",
        action="store_true",
        help="keep image embeddings in memory only (default: also in the on-disk cache that every "
        "worker of a machine shares)",
    )
    run_group.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest input image accepted, in pixels (default: 40000000)",
    )
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    options.add_model_args(p)


def model_options(args):
    from ..batch import ModelOptions

    return ModelOptions(
        base=args.base,
        adapter=args.adapter,
        image_encoder=args.image_encoder,
        vae=args.vae,
        base_config=args.base_config,
        variant=args.variant,
        content_text_encoder=args.content_text_encoder,
        device=args.device,
        dtype=args.dtype,
        memory=args.memory,
        cache_dir=not args.no_cache,
        max_pixels=args.max_pixels,
        **options.speed_args(args),
    )


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """A pre-emption (SIGTERM, e.g. Slurm's) stops the run like Ctrl-C: after the last finished row."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args) -> int:
    import sys

    from .. import preflight
    from ..batch import BatchOptions, run_batch

    # 1. Options and the model pieces, checked before any model loads.
    batch = BatchOptions(
        out=args.out,
        batch_size=args.batch_size,
        retries=args.retries,
        engine=args.engine,
        address=args.address,
        workers=args.workers,
        progress=not args.quiet,
        model=model_options(args),
    )
    batch.check()
    needs = preflight.needs_for_model(
        args.base, args.adapter, args.image_encoder, content_text_encoder=args.content_text_encoder
    )
    common.preflight(args, needs=needs, tryout=common.TRYOUT)
    # 2. Every row; 3. the summary (rank 0's under accelerate) and the exit status.
    with _sigterm_as_interrupt():
        summary = run_batch(args.manifest, batch)
    if summary.coordinator:
        for line in summary.lines():
            print(line)
    if summary.interrupted:
        return 130
    if summary.failed:
        print(
            f"instantstyle: error: {summary.failed} of {summary.rows} rows failed (their errors: "
            f"{batch.out}/results.jsonl); fix them and run the same command again",
            file=sys.stderr,
        )
        return 1
    return 0
