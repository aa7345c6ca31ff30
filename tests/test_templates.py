"""The words of reports and cards are Jinja2 templates (igpt_eval/reporting/templates):
each one parses, is rendered by the code, and a value it names that the code did not pass is
an error, never a blank in a report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

import igpt_eval
from igpt_eval.reporting.templates import environment, paragraph, render

REPORTING = Path(igpt_eval.__file__).parent / "reporting"
TEMPLATES = REPORTING / "templates"
LEFTOVER = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}")


def template_names() -> set[str]:
    return {p.stem for p in TEMPLATES.glob("*.md")}


def rendered_names() -> set[str]:
    """The templates the reporting code renders: ``render("name"`` or
    ``render("name.macro"`` in its modules, and ``{% from "name.md" ... %}`` in templates."""
    code = "\n".join(p.read_text() for p in REPORTING.glob("*.py") if p.stem != "templates")
    names = {m.split(".")[0] for m in re.findall(r'render\(\s*"([\w.]+)"', code)}
    words = "\n".join(p.read_text() for p in TEMPLATES.glob("*.md"))
    return names | set(re.findall(r'\{% (?:from|import|include) "(\w+)\.md"', words))


def test_every_template_parses_and_is_used():
    assert "campaign" in template_names()
    for name in template_names():
        environment().get_template(f"{name}.md")  # a syntax error raises here
    assert rendered_names() == template_names()


def test_no_line_of_text_loses_its_newline():
    """``trim_blocks`` drops the newline after a block tag, also after one that ends a line
    of text (``- a{% endif %}``): the next line would run on. Such a line must end a
    ``{% filter %}`` block (whose lines are joined anyway), or keep its newline (``+%}``)."""
    tag = re.compile(r"\{%.*?%\}|\{#.*?#\}", re.DOTALL)
    for path in sorted(TEMPLATES.glob("*.md")):
        source = path.read_text()
        # Every tag blanked (a tag may span lines), its last character marked.
        blank = tag.sub(lambda m: re.sub(r"[^\n]", " ", m[0])[:-1] + "\0", source)
        lines, blanks = source.splitlines() + [""], blank.splitlines() + [""]
        for i, (line, b) in enumerate(zip(lines[:-1], blanks, strict=False)):
            text = b.replace("\0", "").strip()
            ends = b.rstrip().endswith("\0") and not line.rstrip().endswith("+%}")
            if text and ends and not line.strip().startswith("{% set"):  # a set prints nothing
                nxt = lines[i + 1].strip()
                assert nxt.startswith(("{% endfilter", "{%-")), f"{path.name}:{i + 1}: {line}"


def campaign_values() -> dict:
    return dict(
        name="n", command="igpt-eval campaign", device="cpu", torch="2", status="done",
        drawn_by="", n_layer=2, n_embd=8, n_px=4, colours=4, plan=None, training=None,
        stages="data 1 s", table="| t |", paired=["best − last: +0.1 pp"], finetune=None,
        test_images="10", track=None,
    )  # fmt: skip


def test_a_template_names_every_value_it_needs():
    text = render("campaign", **campaign_values())
    assert text.startswith("# Campaign: n\n") and "| t |" in text
    assert "- best − last: +0.1 pp\n\nTest images: 10.\n" in text
    assert not LEFTOVER.search(text)
    values = campaign_values()
    del values["table"]
    with pytest.raises(jinja2.UndefinedError, match="table"):
        render("campaign", **values)
    values = campaign_values() | dict(plan=dict(steps=3))  # a half-filled sentence
    with pytest.raises(jinja2.UndefinedError, match="ms_per_step"):
        render("campaign", **values)


def test_a_missing_template_is_an_error():
    with pytest.raises(jinja2.TemplateNotFound):
        render("no-such-report")


def test_paragraph_joins_a_block_one_sentence_a_line():
    assert paragraph("  One.\n\n  Two,\n  three.\n") == "One. Two, three.\n"
    text = environment().from_string(
        "{% filter paragraph %}\n{% if a %}\nA is.\n{% else %}\nA is not.\n{% endif %}\nEnd.\n"
        "{% endfilter %}\n\nNext.\n"
    )
    assert text.render(a=True) == "A is. End.\n\nNext.\n"
    assert text.render(a=False) == "A is not. End.\n\nNext.\n"


def test_the_catch_up_line_says_when_the_pretrained_run_never_caught_up():
    catch = dict(kind="catch up", model="m", target="80.00%", total=900, step=None)
    text = render("finetune", finetuned=[], probes=[], pixels=None, differences=[catch])
    assert text.endswith(
        "- steps to reach the from-scratch run's best validation accuracy (80.00%, in 900 "
        "steps): m fine-tuned never reached it\n"
    )
    with pytest.raises(jinja2.UndefinedError, match="fraction"):
        render("finetune", finetuned=[], probes=[], pixels=None,
               differences=[catch | dict(step=300)])  # fmt: skip


def test_help_loads_no_jinja2():
    """Only the commands that write a report import Jinja2 (on their first render)."""
    code = (
        "import sys\nfrom igpt_eval.cli.main import main\n"
        "import igpt_eval.reporting.templates\n"
        "sys.argv = ['igpt-eval', 'report', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('jinja2' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"
