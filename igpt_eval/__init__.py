"""igpt-eval: Image GPT reimplementation and layer-wise representation analysis.

The pipeline, one subpackage a stage: data (palette, datasets, tokens) → model → train →
cache → probes → analysis → studies → reporting, and the command line over them (cli)::

    from igpt_eval import Palette, IGPT, IGPTConfig, load_dataset, load_model
    from igpt_eval import probe_model, compare_models, track_runs, extract, load_results
    from igpt_eval import probe_depth_curve  # results and a matplotlib Figure in one call

Public names are imported lazily, so the command line starts without loading torch.
"""

from importlib import import_module

from igpt_eval.errors import IGPTError

__version__ = "0.1.0"

_LAZY = {
    "ActivationCache": "igpt_eval.cache",
    "DataSource": "igpt_eval.data",
    "ExtractSettings": "igpt_eval.cache",
    "DepthCurve": "igpt_eval.reporting.curve",
    "MODELS_DIR": "igpt_eval.defaults",
    "probe_depth_curve": "igpt_eval.reporting.curve",
    "ModelSource": "igpt_eval.model.sources",
    "Predictions": "igpt_eval.predictions",
    "ProbeSettings": "igpt_eval.studies.settings",
    "TrackSettings": "igpt_eval.studies.settings",
    "compare_models": "igpt_eval.studies.compare",
    "load_results": "igpt_eval.results",
    "probe_model": "igpt_eval.studies.probe",
    "resolve_model": "igpt_eval.model.sources",
    "summary": "igpt_eval.results",
    "track_runs": "igpt_eval.studies.track",
    "write_comparison": "igpt_eval.reporting.comparison",
    "IGPT": "igpt_eval.model",
    "IGPTConfig": "igpt_eval.model",
    "ImageDataset": "igpt_eval.data",
    "Palette": "igpt_eval.data",
    "SITE_KINDS": "igpt_eval.model",
    "extract": "igpt_eval.cache",
    "from_hf": "igpt_eval.model",
    "load_dataset": "igpt_eval.data",
    "load_model": "igpt_eval.model",
    "load_palette": "igpt_eval.model",
    "save_model": "igpt_eval.model",
    "site_name": "igpt_eval.model",
    "to_hf": "igpt_eval.model",
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
