"""Linear probes (docs/design.md): batched L-BFGS logistic regression and streaming SGD heads."""

from igpt_eval.probes.lbfgs import LBFGSOptions
from igpt_eval.probes.logistic import LogisticProbe, fit_grid, fit_path
from igpt_eval.probes.protocol import COARSE_CS, Features, Protocol, probe_lbfgs
from igpt_eval.probes.sgd import SGDProtocol, probe_sgd

__all__ = [
    "COARSE_CS",
    "Features",
    "LBFGSOptions",
    "LogisticProbe",
    "Protocol",
    "SGDProtocol",
    "fit_grid",
    "fit_path",
    "probe_lbfgs",
    "probe_sgd",
]
