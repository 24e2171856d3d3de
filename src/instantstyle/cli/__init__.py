"""Command line: ``instantstyle COMMAND``, one module per subcommand.

A thin front end: each subcommand parses flags (those of ``generate``/``stylize`` from the shared
``GenerateRequest``), calls the library and writes files. Bad input exits with status 2 and one
line ``instantstyle: error: ...`` (the traceback only with ``--debug``); an unexpected failure
exits with status 1 (``common.run_reporting_errors``).

Adding a subcommand: a module here with ``register(subparsers)`` (which calls
``common.add_command(subparsers, NAME, run, ...)``) and ``run(args) -> int``, plus one line in
``SUBCOMMANDS`` below.
"""

from __future__ import annotations

import argparse

from . import (
    batch,
    blocks,
    common,
    compare,
    download,
    evaluate,
    generate,
    make_tiny,
    probe_blocks,
    serve,
    style,
    stylize,
    train_adapter,
    train_blora,
)

# In the order ``instantstyle --help`` lists them.
SUBCOMMANDS = (
    generate,
    stylize,
    blocks,
    style,
    serve,
    compare,
    batch,
    train_blora,
    make_tiny,
    train_adapter,
    evaluate,
    probe_blocks,
    download,
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = common.Parser(
        prog="instantstyle",
        description="Text-to-image in the style of reference images on SDXL or SD1.5 (InstantStyle, arXiv 2404.02733): "
        "the reference's CLIP features go only into the style blocks, and its content can be subtracted.",
        epilog=generate.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common.debug_parent()],
    )
    parser.add_argument("--version", action="version", version=f"instantstyle {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.run_reporting_errors(args)
