"""``instantstyle download``: the subcommand's flags and its one function (the work is in
``instantstyle.download``)."""

from __future__ import annotations

import argparse
import sys

from . import common


def register(sub) -> None:
    from ..download import DEFAULT_FEATURES, FEATURES

    table = "\n".join(f"  {f.name:<8} {f.summary}" for f in FEATURES.values())
    d = common.add_command(
        sub,
        "download",
        run,
        help="fetch the weights that chosen features need (base, adapter, ControlNets)",
        description="Fetch exactly the files a set of features needs into the Hugging Face cache, through "
        "huggingface_hub (progress bars; an interrupted download resumes when run again). Then every "
        "command runs offline (HF_HUB_OFFLINE=1).",
        epilog=f"features:\n{table}\n\nexamples:\n"
        "  instantstyle download                    # base + adapter: generate, style save, compare, serve\n"
        "  instantstyle download base adapter canny tile --dry-run   # what would come, without the network\n"
        "  instantstyle download someone/sdxl-finetune --variant fp16   # any Hub repo, file or folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument(
        "items",
        nargs="*",
        metavar="FEATURE|REF",
        default=list(DEFAULT_FEATURES),
        help=f"features ({', '.join(FEATURES)}) or Hub references 'owner/repo[/path]' "
        f"(default: {' '.join(DEFAULT_FEATURES)})",
    )
    d.add_argument(
        "--dry-run",
        action="store_true",
        help="list the files that would be fetched and which are already cached; needs no network",
    )
    d.add_argument(
        "--variant",
        default=None,
        help="for a whole Hub repo given as REF: fetch only this weights "
        "variant, e.g. fp16 (the features fetch fp16 already)",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from .. import download

    pieces = download.plan(args.items, args.variant)
    if args.dry_run:
        print("\n".join(download.describe(pieces)))
        return 0
    for path in download.fetch(pieces, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr)):
        print(path)
    return 0
