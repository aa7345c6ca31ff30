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
            # ``is``, not ``in``: a default of 0 is a default to show (0 == False).
            off = a.default is None or a.default is False or a.default is argparse.SUPPRESS
            if off or isinstance(a, argparse._VersionAction):
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


def _flags(p: argparse.ArgumentParser) -> set[str]:
    """The documented option strings of a subcommand (hidden aliases left out)."""
    return {s for a in _options(p) for s in a.option_strings}


def test_one_vocabulary_across_subcommands():
    subs = _subparsers(build_parser())
    flags = {name: _flags(p) for name, p in subs.items()}
    # One way to name several models, the control, and snapshot steps.
    for name, f in flags.items():
        assert not f & {"--models", "--no-random-control", "--random-init"}, name
    assert "--model" in flags["compare"] and "--model" in flags["lowdata"]
    assert {"--random-weights"} <= flags["probe"] & flags["finetune"] & flags["compare"]
    # --steps counts optimizer steps only; --k is palette colours only.
    assert {n for n, f in flags.items() if "--steps" in f} <= {"pretrain", "finetune"}
    assert {n for n, f in flags.items() if "--k" in f} == {"palette"}
    assert "--snapshot-steps" in flags["track"] and "--labels-per-class" in flags["lowdata"]
    # Every --model takes any model source and says so.
    for name, p in subs.items():
        for a in _options(p):
            if "--model" in a.option_strings and name not in ("pretrain", "model-card"):
                assert "hf:OWNER/NAME" in a.help, name


def test_old_spellings_still_parse():
    """Recorded commands keep running: the earlier names are hidden aliases."""
    parse = build_parser().parse_args
    assert parse(["compare", "--models", "a", "b"]).models == ["a", "b"]
    assert parse(["compare", "--no-random-control"]).random_weights is False
    assert parse(["finetune", "--model", "m", "--out", "o", "--random-init"]).random_weights
    assert parse(["track", "--run", "r", "--out", "o", "--steps", "0,10"]).snapshot_steps == (0, 10)
    assert parse(["lowdata", "--model", "m", "--out", "o", "--k", "4"]).labels_per_class == [4]


def test_seeds_say_what_they_seed():
    """--split-seed is the train/val split's seed wherever it appears; every --seed says
    what it seeds (three commands gave it no help at all)."""
    for name, p in _subparsers(build_parser()).items():
        for a in _options(p):
            if "--split-seed" in a.option_strings:
                assert "train/val split" in a.help, name
            if "--seed" in a.option_strings:
                assert a.help and "seed" in a.help, name
    assert "--split-seed" in _flags(_subparsers(build_parser())["extract"])


def test_the_split_has_its_own_seed_everywhere_data_is_read():
    """palette, tokenize and pretrain take --split-seed for the split; --seed, where there
    is one, seeds the command's own randomness and never the split."""
    subs = _subparsers(build_parser())
    for name in ("palette", "tokenize", "pretrain", "extract", "finetune"):
        assert "--split-seed" in _flags(subs[name]), name
    assert "--seed" not in _flags(subs["tokenize"])  # nothing random but the split
    for name in ("palette", "pretrain"):
        seed = next(a for a in _options(subs[name]) if "--seed" in a.option_strings)
        assert "split" not in seed.help or "--split-seed" in seed.help, name


def test_native_pixels_has_one_default():
    from igpt_eval import ProbeSettings

    parse = build_parser().parse_args
    defaults = {parse(["probe"]).native_pixels, parse(["compare"]).native_pixels}
    assert defaults == {ProbeSettings().native_pixels}


def test_probe_and_compare_settings_come_from_their_flags():
    """One translation of flags to ProbeSettings for both commands: a flag both take means
    the same in each (compare's --cache-dtype was once dropped on the way)."""
    from igpt_eval.cli.main import build_parser
    from igpt_eval.cli.probe import probe_settings_from_args

    flags = ["--cache-dtype", "float16", "--bf16", "--no-pixels", "--seed", "3",
             "--train-size", "100", "--random-weights"]  # fmt: skip
    p = build_parser()
    probe = probe_settings_from_args(p.parse_args(["probe", *flags]))
    compare = probe_settings_from_args(p.parse_args(["compare", *flags]), random_weights=False)
    for s in (probe, compare):
        assert (s.cache_dtype, s.compute, s.pixels, s.seed, s.train_size) == (
            "float16",
            "bfloat16",
            False,
            3,
            100,
        )
    assert probe.random_weights and not compare.random_weights  # compare: twins beside
