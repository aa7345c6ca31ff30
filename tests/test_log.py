"""What the package says while it works: the ``igpt_eval`` logger, the command line's handler
and its flags, and progress bars that follow the level."""

from __future__ import annotations

import logging

import pytest

from igpt_eval import log as igpt_log
from igpt_eval.cli import main
from igpt_eval.log import LOGGER, cli_logging, progress_bar, shows_progress

log = logging.getLogger("igpt_eval.tests")


@pytest.fixture
def terminal(monkeypatch):
    """stderr as a person's terminal (under pytest it is a captured stream)."""
    monkeypatch.setattr(igpt_log, "_interactive", lambda: True)


def _handlers() -> int:
    return len(LOGGER.handlers)


def test_cli_logging_sets_the_level_and_leaves_no_trace(capsys, terminal):
    level, handlers = LOGGER.level, _handlers()
    with cli_logging(0):
        log.info("an info line")
        log.debug("a debug line")
        assert shows_progress()
    err = capsys.readouterr().err
    assert "an info line" in err and "a debug line" not in err
    with cli_logging(-1):
        log.info("hidden")
        log.warning("a warning")
        assert not shows_progress()  # --quiet: no bars either
    err = capsys.readouterr().err
    assert "hidden" not in err and "a warning" in err
    with cli_logging(1):
        log.debug("shown now")
    assert "shown now" in capsys.readouterr().err
    # Afterwards: the level and handlers as before, so library calls print no INFO line.
    assert (LOGGER.level, _handlers()) == (level, handlers)
    assert shows_progress()
    log.info("after the command")
    assert "after the command" not in capsys.readouterr().err


def test_bars_follow_the_level_the_rank_and_the_terminal(monkeypatch, terminal):
    assert not progress_bar(range(3)).disable
    LOGGER.setLevel(logging.WARNING)  # setLevel, not an attribute: it clears logging's cache
    try:
        assert progress_bar(range(3)).disable  # a notebook's setLevel("WARNING") hides them
    finally:
        LOGGER.setLevel(logging.INFO)
    monkeypatch.setenv("RANK", "1")
    assert progress_bar(range(3)).disable  # only rank 0 of a torchrun job draws bars
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(igpt_log, "_interactive", lambda: False)
    assert progress_bar(range(3)).disable  # a log file or captured stream gets no bars


def test_a_captured_stream_is_no_terminal():
    assert not igpt_log._interactive()  # pytest captures stderr: no bars in the tests'
    assert not shows_progress()


def test_quiet_and_no_progress_on_a_command(tmp_path, tiny_npz, capsys, terminal):
    """A subcommand's bar (tokenize) is on stderr by default, gone with --quiet (or its
    earlier spelling --no-progress); the command's result on stdout is the same."""
    pal = tmp_path / "pal.npy"
    ds = f"npz:{tiny_npz}"
    assert main(["palette", "--dataset", ds, "--k", "6", "--out", str(pal), "-q"]) == 0
    assert capsys.readouterr().err == ""
    base = ["tokenize", "--dataset", ds, "--palette", str(pal), "--split", "test", "--n-px", "4"]
    outs = []
    for i, flags in enumerate(([], ["--quiet"], ["--no-progress"])):
        assert main([*base, "--out", str(tmp_path / f"tok{i}"), *flags]) == 0
        r = capsys.readouterr()
        assert ("tokenize" in r.err) == (not flags), (flags, r.err)
        outs.append(r.out.replace(f"tok{i}", "tok"))
    assert outs[0] == outs[1] == outs[2]
    # One of the two: the flags exclude each other, as a usage error (one line, exit 2).
    assert main([*base, "--out", str(tmp_path / "x"), "-q", "-v"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
