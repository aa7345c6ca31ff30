"""What the package says while it works: the ``igpt_eval`` logger, and progress bars that
follow it.

Every module logs through ``logging.getLogger(__name__)``, a child of ``igpt_eval``: INFO
for what a stage is doing (``extract``: a cache reused, ``campaign``: a stage begun), DEBUG
for detail, WARNING for what a user should know. The package adds no handler of its own;
the command line installs one on stderr (:func:`cli_logging`: ``--quiet`` keeps warnings
only and hides the bars, ``--verbose`` adds the debug lines), and a notebook
sees warnings through Python's last-resort handler, or everything after
``logging.basicConfig(level="INFO")``.

Progress bars (:func:`progress_bar`, tqdm's text bars) are shown on a terminal or in a
notebook (not in a log file or a captured stream, where they would be noise), while the
``igpt_eval`` logger is enabled for INFO, on rank 0 of a distributed run only, so one switch
silences lines and bars alike: ``logging.getLogger("igpt_eval").setLevel("WARNING")``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from tqdm import tqdm  # text bars everywhere: no widget needed in a notebook

LOGGER = logging.getLogger("igpt_eval")
if LOGGER.level == logging.NOTSET:  # INFO by default, so bars show; a handler decides lines
    LOGGER.setLevel(logging.INFO)


def shows_progress() -> bool:
    """Whether progress bars are shown now: INFO enabled, rank 0 (``RANK`` is set by
    torchrun; a plain process is rank 0), and stderr a terminal or a notebook's."""
    if int(os.environ.get("RANK", "0")) != 0 or not LOGGER.isEnabledFor(logging.INFO):
        return False
    return _interactive()


def _interactive() -> bool:
    """A person watches stderr: a terminal, or a Jupyter kernel's output stream."""
    err = sys.stderr  # a kernel's is ipykernel's OutStream (ipykernel may be imported elsewhere)
    return type(err).__module__.startswith("ipykernel") or bool(getattr(err, "isatty", bool)())


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar (same arguments) shown when :func:`shows_progress` says so."""
    kwargs.setdefault("disable", not shows_progress())
    return tqdm(iterable, **kwargs)


class _Stderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record is written (a handler bound to
    the stream at creation would keep writing to a replaced one: pytest's, a notebook's)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property reads anew
        pass


@contextlib.contextmanager
def cli_logging(verbosity: int = 0):
    """The command line's logging, for the duration of one command: a stderr handler with
    plain messages at WARNING (``verbosity`` < 0, ``--quiet``: no bars either), INFO (0) or
    DEBUG (> 0, ``--verbose``). On exit the handler and level are as they were (a command
    run inside a notebook or a test leaves no trace on what runs after it)."""
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    before = LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(
        logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    )
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(before)
