"""The ``igpt-eval`` command.

Each subcommand is a pair of functions: ``_add_<name>(sub)`` declares its flags and
``_cmd_<name>(args)`` runs it by calling the library (the CLI holds no logic of its own).
Errors a user can cause are :class:`~igpt_eval.errors.IGPTError`: printed as one line with a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from igpt_eval.errors import IGPTError

PROG = "igpt-eval"

# name -> function that adds the subcommand's parser; filled by @_subcommand, in file order.
_SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def _subcommand(add: Callable[[argparse._SubParsersAction], None]):
    """Register ``_add_<name>`` as the parser builder of subcommand ``<name>``."""
    _SUBCOMMANDS[add.__name__.removeprefix("_add_")] = add
    return add


def _fail(msg: str, code: int = 2) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless ``--overwrite`` was given."""
    if path.exists() and not overwrite:
        raise IGPTError(f"{path} already exists; pass --overwrite to replace it")


# --------------------------------------------------------------------------- palette / tokenize
# (owned by the palette + data work; see igpt_eval/palette.py and igpt_eval/data/)


# --------------------------------------------------------------------------- model / convert / info


# --------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one subparser per registered subcommand)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Image GPT: palettes, models, activation caches and layer-wise probes.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except (IGPTError, OSError) as e:
        if args.debug:
            raise
        return _fail(str(e) if isinstance(e, IGPTError) else f"{type(e).__name__}: {e}")
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
