"""The ``igpt-eval`` command: one subcommand per pipeline stage (``igpt_eval/cli/``).

Errors a user can cause are :class:`~igpt_eval.errors.IGPTError`: printed as one line with a
non-zero exit; ``--debug`` shows the traceback instead. Results go to stdout; what a command
is doing goes to stderr through :mod:`igpt_eval.log` (every subcommand takes ``--quiet``,
``--verbose``).
"""

from __future__ import annotations

import argparse
import sys

from igpt_eval import __version__
from igpt_eval.cli import (
    campaign,
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
from igpt_eval.cli.common import SUBCOMMANDS, positive_int
from igpt_eval.errors import IGPTError
from igpt_eval.log import cli_logging

PROG = "igpt-eval"

# Command modules, in the order of the pipeline (each registers its subcommands on import).
_MODULES = (
    data, pretrain, finetune, extract, probe, models, sample, compare, track, campaign, report,
)  # fmt: skip


def _fail(msg: str, code: int = 2) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default, unless the help already states it or there
    is none to state (a flag that is off, or a default decided at run time)."""

    def _get_help_string(self, action):
        text = action.help or ""
        off = action.default is None or action.default is False  # not `in`: 0 == False
        if "default" in text.lower() or off or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (the usage itself is one ``--help`` away) and
    defaults shown in every help (subcommands use this class too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one subparser per registered subcommand)."""
    parser = _Parser(
        prog=PROG,
        description="Image GPT: palettes, models, activation caches and layer-wise probes.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: torch's, one per core; see the README)",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    for module in _MODULES:
        for add in SUBCOMMANDS.values():
            if add.__module__ == module.__name__:
                add(sub)
    for command in sub.choices.values():
        _add_output_flags(command)
    return parser


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """What every subcommand says on stderr (after the subcommand, where users type them;
    a flag on the main parser too would be overwritten by the subcommand's default)."""
    g = p.add_argument_group("output")
    loud = g.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="warnings only, no bars")
    loud.add_argument("-v", "--verbose", action="store_true", help="debug lines too")
    # The earlier spelling of --quiet, unlisted: recorded commands (model cards) use it.
    loud.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed on one line)
        return int(e.code or 0)
    args.argv = list(argv)  # what runs record as their command (cli.common.command_line)
    with cli_logging(int(args.verbose) - int(args.quiet)):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The parsed command, with errors a user can cause as one line."""
    try:
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        # Once, before anything is read; a dry run plans for the device named, present or not.
        if getattr(args, "device", None) is not None and not getattr(args, "dry_run", False):
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
