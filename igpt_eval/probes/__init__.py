"""Linear probes (docs/design.md): batched L-BFGS logistic regression and streaming SGD heads."""

from igpt_eval.probes.logistic import LogisticProbe, fit_grid, fit_path
from igpt_eval.probes.protocol import COARSE_CS, Features, probe_lbfgs
from igpt_eval.probes.settings import ProbeSettings

__all__ = [
    "COARSE_CS",
    "Features",
    "LogisticProbe",
    "ProbeSettings",
    "fit_grid",
    "fit_path",
    "probe_lbfgs",
]
