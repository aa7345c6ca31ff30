"""igpt-eval: Image GPT reimplementation and layer-wise representation analysis."""

from igpt_eval.errors import IGPTError

__version__ = "0.1.0"

__all__ = ["IGPTError", "__version__"]
