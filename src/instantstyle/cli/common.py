"""What every subcommand shares: the one-line error parser, ``--debug``, quiet libraries, the
pre-flight call, and the one place that turns errors into ``instantstyle: error: ...``."""

from __future__ import annotations

import argparse
import sys

from ..errors import InstantStyleError

TRYOUT = (
    "or try the commands without weights first: add --base tiny (a random-weight model; its images are noise)"
)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem, a "did you mean" for a misspelt choice, where to
    look; no usage dump (``--help`` shows it)."""

    def error(self, message: str):
        import difflib
        import re

        hint = ""
        match = re.search(r"invalid choice: '?([^' ]+)'? \(choose from (.*)\)", message)
        if match:
            choices = [c.strip().strip("'\"") for c in match.group(2).split(",")]
            close = difflib.get_close_matches(match.group(1), choices, n=1, cutoff=0.5)
            message = f"{message.split(' (choose from')[0]}; choose from {', '.join(choices)}"
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.exit(2, f"{self.prog.split()[0]}: error: {message}{hint}; see `{self.prog} --help`\n")


def debug_parent() -> argparse.ArgumentParser:
    """The parent parser of every subcommand: ``--debug``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return common


def add_command(sub, name: str, run, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser that shares ``--debug`` and dispatches to ``run(args)``."""
    parser = sub.add_parser(name, parents=[debug_parent()], **kwargs)
    parser.set_defaults(run=run)
    return parser


def quiet_libraries(load: bool = False) -> None:
    """Library chatter (deprecation notes, backend fallbacks) is not for CLI users; --debug keeps it.

    Environment and ``logging`` settings only, unless ``load``: importing diffusers takes seconds,
    and the pre-flight must answer before that (``preflight`` calls this again with ``load``).
    """
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # read when the libraries are imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("diffusers", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        if load or module in sys.modules:
            try:
                __import__(module, fromlist=["set_verbosity_error"]).set_verbosity_error()
            except ImportError:
                pass


def no_progress_bars(load: bool = False) -> None:
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        if load or module in sys.modules:
            try:
                __import__(module, fromlist=["disable_progress_bar"]).disable_progress_bar()
            except (ImportError, AttributeError):
                pass


def preflight(args, checks=(), needs=(), *, tryout: str | None = None) -> None:
    """``preflight.run``, then the library settings that need the libraries imported."""
    from .. import preflight as checks_module

    checks_module.run(checks, needs, tryout=tryout)
    if not args.debug:
        quiet_libraries(load=True)
    if getattr(args, "quiet", False):
        no_progress_bars(load=True)


def one_line_warnings() -> None:
    """Our own warnings (e.g. a prompt that will be cut) as ``instantstyle: warning: ...``."""
    import warnings

    from ..errors import InstantStyleWarning

    default = warnings.showwarning
    if getattr(default, "instantstyle", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InstantStyleWarning):
            print(f"instantstyle: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    show.instantstyle = True
    warnings.showwarning = show


# The library's errors name its parameters; on the command line the same advice names the flag.
_LIBRARY_TO_FLAGS = {
    r"\boverwrite=True\b": "--overwrite",
    r"\bresume='latest'": "--resume latest",
    r"\bmax_steps\b": "--max-steps",
    r"\bout '": "--out '",
    r"\banother out\b": "another --out",
}


def flag_names(message: str) -> str:
    import re

    for library, flag in _LIBRARY_TO_FLAGS.items():
        message = re.sub(library, flag, message)
    return message


def run_reporting_errors(args) -> int:
    """Run the chosen subcommand: bad input -> one line and status 2, a crash -> one line and 1
    (the traceback only with ``--debug``), Ctrl-C -> 130."""
    if not args.debug:
        quiet_libraries()
    one_line_warnings()
    if getattr(args, "quiet", False):
        no_progress_bars()
    try:
        return args.run(args)
    except InstantStyleError as exc:
        if args.debug:
            raise
        print(f"instantstyle: error: {flag_names(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("instantstyle: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place that turns crashes into one line
        if args.debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"instantstyle: error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
