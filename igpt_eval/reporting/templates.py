"""Report prose as templates: the words live in ``reporting/templates/<name>.md``
(:class:`string.Template`, ``$name`` placeholders), the numbers are computed in Python and
filled in by :func:`render`. A placeholder left unfilled is a :class:`KeyError`: a bug in the
report's code, never a user's input."""

from __future__ import annotations

from importlib.resources import files
from string import Template


def render(template: str, /, **values) -> str:
    """The template ``templates/<template>.md`` with ``values`` filled in."""
    text = files("igpt_eval.reporting").joinpath("templates", f"{template}.md").read_text()
    return Template(text).substitute(values)
