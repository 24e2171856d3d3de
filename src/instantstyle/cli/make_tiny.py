"""``instantstyle make-tiny``: the tiny random-weight test model, written in the standard layouts."""

from __future__ import annotations

from . import common


def register(sub) -> None:
    t = common.add_command(
        sub,
        "make-tiny",
        run,
        help="write the tiny random-weight test model to DIR",
        description="Write a tiny random-weight SDXL (real block structure), image encoder and "
        "IP-Adapter in the standard on-disk layouts. Its images are noise.",
    )
    t.add_argument("dir")


def run(args) -> int:
    from ..sources.tiny import make_tiny

    paths = make_tiny(args.dir)
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0
