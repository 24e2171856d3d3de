"""``instantstyle make-tiny``: the tiny random-weight test model, written in the standard layouts."""

from __future__ import annotations

from . import common


def register(sub) -> None:
    t = common.add_command(
        sub,
        "make-tiny",
        run,
        help="write the tiny random-weight test model to DIR",
        description="Write a tiny random-weight SDXL and SD1.5 (real block structures), their image "
        "encoders and IP-Adapters (ip-adapter_sdxl, ip-adapter_sd15 layouts) in the standard on-disk "
        "layouts, and one single-file checkpoint of each. Its images are noise.",
    )
    t.add_argument("dir")


def run(args) -> int:
    from ..sources.tiny import make_tiny

    paths = make_tiny(args.dir)
    for key, value in paths.items():
        print(f"{key}: {value}")
    return 0
