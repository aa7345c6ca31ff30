"""The analysis stage: pure computation over features and results (arrays and tables in,
numbers out; no model is run here).

- :mod:`~igpt_eval.analysis.similarity`: weighted kNN and linear CKA (exported here);
- :mod:`~igpt_eval.analysis.layers`: those as rows of a results table, per layer;
- :mod:`~igpt_eval.analysis.paired`: paired-difference rows of a results table, read and
  put into words (computed by :mod:`igpt_eval.probes.paired`);
- :mod:`~igpt_eval.analysis.metrics`: a model's bits per dimension next to token baselines.

The bootstrap intervals, paired bootstrap and McNemar's test are :mod:`igpt_eval.stats`,
where every stage finds them. The studies that run models end to end are
:mod:`igpt_eval.studies`.
"""

from igpt_eval.analysis.similarity import KNNResult, cka_matrix, knn_accuracy, linear_cka

__all__ = [
    "KNNResult",
    "cka_matrix",
    "knn_accuracy",
    "linear_cka",
]
