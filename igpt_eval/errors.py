"""User-facing errors.

Anything a user can cause by bad input (wrong shapes, unknown names, a corrupt file) raises
:class:`IGPTError` with a one-line message that says what is wrong and, where possible, how to
fix it. The CLI prints that line and exits non-zero; a traceback only appears with ``--debug``.
Bugs in the toolkit itself stay ordinary exceptions.
"""

from __future__ import annotations


class IGPTError(ValueError):
    """Bad input from the user: printed by the CLI as one line, exit status 2."""
