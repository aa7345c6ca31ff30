"""The reporting stage: everything drawn or written from results files, one home each.

- :mod:`~igpt_eval.reporting.tables`: summaries of a results table, the comparison table
  and its markdown, the terminal table of ``igpt-eval probe``;
- :mod:`~igpt_eval.reporting.figures`: figures of results (depth curves, kNN, CKA, training
  curves, palette), on bare Agg figures;
- :mod:`~igpt_eval.reporting.model_figures`: figures of one trained model (its loss curve,
  grids of samples and completions);
- :mod:`~igpt_eval.reporting.words`: the verdicts and numbers behind a report's sentences;
- :mod:`~igpt_eval.reporting.templates`: the words and markdown of every report and card
  (``templates/*.md``, Jinja2), filled with those numbers;
- :mod:`~igpt_eval.reporting.report`: ``igpt-eval report`` (``reports/README.md`` and its
  figures);
- :mod:`~igpt_eval.reporting.track`, :mod:`~igpt_eval.reporting.lowdata`: the tables,
  figures and words of the training-dynamics (``igpt-eval track``) and low-data studies;
- :mod:`~igpt_eval.reporting.modelcard`: ``MODEL_CARD.md`` of a checkpoint folder, and
  :mod:`~igpt_eval.reporting.probe_card` its linear-probe section (from a results table).
"""
