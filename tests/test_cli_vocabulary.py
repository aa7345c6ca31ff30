"""The command line as one vocabulary: every help shows its defaults, --version, --threads.
A walk over the parser, so a new subcommand or flag is checked without a new test."""

from __future__ import annotations

import argparse

import pytest

from igpt_eval import __version__
from igpt_eval.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(p: argparse.ArgumentParser):
    for a in p._actions:
        if a.option_strings and a.help is not argparse.SUPPRESS and a.dest != "help":
            yield a


def test_every_flag_with_a_default_shows_it():
    missing = []
    for name, p in _subparsers(build_parser()).items():
        text = p.format_help()
        assert "%%" not in text and "%(" not in text, name
        for a in _options(p):
            if a.default in (None, False, argparse.SUPPRESS) or isinstance(
                a, argparse._VersionAction
            ):
                continue
            formatter = p._get_formatter()
            shown = formatter._expand_help(a) if a.help else ""
            if "default" not in shown.lower():
                missing.append(f"{name} {a.option_strings[0]}")
    assert not missing, f"flags whose help hides their default: {missing}"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"igpt-eval {__version__}"


def test_threads(tmp_path, capsys):
    import torch

    n = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "info", str(tmp_path / "none")]) == 2
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n)
    capsys.readouterr()
    assert main(["--threads", "0", "info", "x"]) == 2
    assert "must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--device"])
def test_shared_flags_mean_one_thing(flag):
    """A flag that several subcommands take has one default and one help text."""
    seen = {}
    for name, p in _subparsers(build_parser()).items():
        for a in _options(p):
            if flag in a.option_strings:
                seen[name] = (a.default, a.help)
    assert len(seen) >= 5, seen
    assert len(set(seen.values())) == 1, seen
