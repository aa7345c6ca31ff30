"""The analysis stage: statistics over features and probe results, and the studies.

- :mod:`~igpt_eval.analysis.stats`: weighted kNN and linear CKA (plain arrays in, numbers
  out; exported here). The bootstrap intervals, paired bootstrap and McNemar's test are
  :mod:`igpt_eval.stats`, where every stage finds them;
- :mod:`~igpt_eval.analysis.paired`: paired-difference rows of a results table, read and
  put into words (computed by :mod:`igpt_eval.probes.paired`);
- :mod:`~igpt_eval.analysis.metrics`: a model's bits per dimension next to token baselines;
- :mod:`~igpt_eval.analysis.compare`: the model-vs-model comparison (``igpt-eval compare``);
- :mod:`~igpt_eval.analysis.track`: probes over training snapshots (``igpt-eval track``);
- :mod:`~igpt_eval.analysis.lowdata`: the low-data study (``igpt-eval lowdata``);
- :mod:`~igpt_eval.analysis.settings`: the settings of those studies (light: no torch).
"""

from importlib import import_module

__all__ = [
    "KNNResult",
    "cka_matrix",
    "knn_accuracy",
    "linear_cka",
]


def __getattr__(name: str):
    # The statistics are imported on first use: this package also holds the light settings
    # module (:mod:`~igpt_eval.analysis.settings`) that the command line reads at start-up.
    if name in __all__:
        value = getattr(import_module("igpt_eval.analysis.stats"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'igpt_eval.analysis' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
