"""Report prose as templates: the words and the markdown of every report and card live in
``reporting/templates/<name>.md`` (Jinja2), the numbers are computed and formatted in
Python and filled in by :func:`render`.

The templates choose *which* words a report says (``{% if %}`` on verdicts the code
computed, such as whether a paired interval excludes 0); the code never writes a sentence.
Shared phrases are macros in ``templates/_words.md``. A value a template names but the
code did not pass is an error (:class:`jinja2.StrictUndefined`): a bug in the report's
code, never a user's input.

Whitespace: a line holding only a ``{% ... %}`` tag leaves nothing in the output
(``trim_blocks``, ``lstrip_blocks``), and ``{% filter paragraph %}`` (``phrase``: without
the newline) joins the lines of a block into one line, so that a paragraph can be written
one sentence a line.

Jinja2 is imported on the first :func:`render`, not with this module: only the commands
that write reports pay for it.
"""

from __future__ import annotations

from functools import cache


def phrase(text: str) -> str:
    """The non-blank lines of ``text``, stripped and joined by one space: one line of
    words from a block written one sentence (or clause) a line."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def paragraph(text: str) -> str:
    """:func:`phrase` and a newline: one markdown paragraph (one line)."""
    return phrase(text) + "\n"


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals: ``0.8383`` → ``83.83%``."""
    return f"{100 * x:.2f}%"


def thousands(n) -> str:
    """An integer with thousands separators: ``54000`` → ``54,000``."""
    return f"{int(n):,}"


@cache
def environment():
    """The templates' :class:`jinja2.Environment` (made once)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("igpt_eval.reporting", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(paragraph=paragraph, phrase=phrase, pct=pct, thousands=thousands)
    return env


def render(template: str, /, **values) -> str:
    """``templates/<template>.md`` rendered with ``values``; ``"<template>.<macro>"``
    calls one macro of it instead (``render("_words.shape", ...)``), with ``values`` as its
    arguments."""
    name, _, macro = template.partition(".")
    t = environment().get_template(f"{name}.md")
    if macro:
        return str(getattr(t.module, macro)(**values))
    return t.render(**values)
