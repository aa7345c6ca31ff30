"""``python -m igpt_eval.cli``: the same as the ``igpt-eval`` command."""

import sys

from igpt_eval.cli.main import main

sys.exit(main())
