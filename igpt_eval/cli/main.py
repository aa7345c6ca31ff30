"""The ``igpt-eval`` command: one subcommand per pipeline stage (``igpt_eval/cli/``).

Errors a user can cause are :class:`~igpt_eval.errors.IGPTError`: printed as one line with a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from igpt_eval.cli import (
    compare,
    data,
    extract,
    finetune,
    models,
    pretrain,
    probe,
    report,
    sample,
    track,
)
from igpt_eval.cli.common import SUBCOMMANDS
from igpt_eval.errors import IGPTError

PROG = "igpt-eval"

# Command modules, in the order of the pipeline (each registers its subcommands on import).
_MODULES = (data, pretrain, finetune, extract, probe, models, sample, compare, track, report)


def _fail(msg: str, code: int = 2) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the usage itself is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one subparser per registered subcommand)."""
    parser = _Parser(
        prog=PROG,
        description="Image GPT: palettes, models, activation caches and layer-wise probes.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _MODULES:
        for add in SUBCOMMANDS.values():
            if add.__module__ == module.__name__:
                add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed on one line)
        return int(e.code or 0)
    args.argv = list(argv)  # what runs record as their command (cli.common.command_line)
    try:
        if getattr(args, "device", None) is not None:  # once, before anything is read
            from igpt_eval.model.devices import resolve_device

            args.device = str(resolve_device(args.device))
        result = args.func(args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except (IGPTError, OSError) as e:
        if args.debug:
            raise
        return _fail(str(e) if isinstance(e, IGPTError) else f"{type(e).__name__}: {e}")
    return int(result or 0)
