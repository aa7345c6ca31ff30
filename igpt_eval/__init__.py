"""igpt-eval: Image GPT reimplementation and layer-wise representation analysis.

The pipeline, one module a stage: palette → data → model → pretrain → cache → probes → report.

    from igpt_eval import Palette, IGPT, IGPTConfig, load_dataset

Public names are imported lazily, so the command line starts without loading torch.
"""

from importlib import import_module

from igpt_eval.errors import IGPTError

__version__ = "0.1.0"

_LAZY = {
    "ActivationCache": "igpt_eval.cache",
    "IGPT": "igpt_eval.model",
    "IGPTConfig": "igpt_eval.config",
    "ImageDataset": "igpt_eval.data",
    "Palette": "igpt_eval.palette",
    "SITE_KINDS": "igpt_eval.sites",
    "extract": "igpt_eval.extraction",
    "load_dataset": "igpt_eval.data",
    "site_name": "igpt_eval.sites",
    "tokenize": "igpt_eval.data",
}

__all__ = ["IGPTError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'igpt_eval' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
