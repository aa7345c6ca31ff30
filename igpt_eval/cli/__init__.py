"""The ``igpt-eval`` command line: :func:`main` (:mod:`~igpt_eval.cli.main`), one module per
pipeline stage registering its subcommands (``data``, ``pretrain``, ``finetune``,
``extract``, ``probe``, ``models``, ``sample``, ``compare``, ``track``, ``report``), the
flags and helpers they share (:mod:`~igpt_eval.cli.common`), and ``igpt-eval info``
(:mod:`~igpt_eval.cli.info`).

Only the standard library and the light modules (``errors``, ``defaults``) are imported at
start-up; each subcommand imports the library when it runs, so ``igpt-eval --help`` does not
load torch.
"""

from igpt_eval.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
