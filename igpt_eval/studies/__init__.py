"""The studies: each runs models, probes or fine-tunes end to end and returns typed results
(it writes no report; the command that ran it hands them to :mod:`igpt_eval.reporting`).

- :mod:`~igpt_eval.studies.probe`: every layer of one model probed, with the controls
  (:func:`probe_model`, ``igpt-eval probe``);
- :mod:`~igpt_eval.studies.compare`: models probed on the same splits, plus kNN and CKA
  (``igpt-eval compare``);
- :mod:`~igpt_eval.studies.track`: probes over training snapshots (``igpt-eval track``);
- :mod:`~igpt_eval.studies.lowdata`: probes against fine-tuning at K labels per class
  (``igpt-eval lowdata``);
- :mod:`~igpt_eval.studies.campaign` (with :mod:`~igpt_eval.studies.campaign_plan`): data →
  pretraining under a time budget → every probe study (``igpt-eval campaign``);
- :mod:`~igpt_eval.studies.settings`: the settings of those studies (light: no torch, read by
  the command line at start-up).
"""
