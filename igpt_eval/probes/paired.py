"""Paired differences between probes on the same test images (docs/design.md), as tidy rows.

Two accuracies measured on the same test images are compared on those images: per example,
both right, both wrong, or only one right. The difference ``a − b`` gets a paired bootstrap
95% interval and McNemar's exact p-value (:func:`igpt_eval.stats.paired_difference`),
computed from the per-example test predictions kept beside the results
(:class:`igpt_eval.results.Predictions`). Overlapping marginal intervals are no evidence of
"no difference": the paired interval is the one to read.

Every "best" layer is the one chosen on *validation* (:func:`igpt_eval.results.summary`:
the highest validation accuracy, the earliest among equals), never on test. The contrasts
(``contrast`` column):

- ``best_vs_last``: for each model and probe (``lbfgs``, ``sgd``, ``knn``), best − last layer;
- ``best_vs_pixels``: for each model's linear probe, best layer − the raw-pixel baseline;
- ``best_vs_pixels_native``: likewise against the raw pixels at native resolution;
- ``best_vs_random``: for each model's linear probe, best layer − the best layer (chosen on
  validation too) of its random-weights twin, probed alike;
- ``concat_vs_best``: the multi-layer probe (``lbfgs_concat``, the layers around the best
  one concatenated) − the best single layer;
- ``best_vs_best``: for each pair of models (in order of appearance) and each probe both
  have, model A's best − model B's best.

Controls are never the subject of a contrast: the pixel controls, and a random-weights twin
whose trained model is in the same results (:func:`igpt_eval.results.model_names`).

A row names side a in ``model``/``probe``/``layer``/``site`` and side b in ``vs_model``/
``vs_probe``/``vs_layer``/``vs_site``; ``metric = "accuracy_diff"``, ``split = "test"``,
``value`` is the difference (a fraction), ``ci_low``/``ci_high`` its interval, ``p_value``
McNemar's, ``n_eval`` the test images, ``n10``/``n01`` the examples only a / only b gets
right.

:func:`~igpt_eval.studies.probe.probe_model` adds these rows to every probe run, and
:func:`~igpt_eval.studies.compare.compare_models` to a comparison;
:mod:`igpt_eval.analysis.paired` reads them back and words them.
"""

from __future__ import annotations

import pandas as pd

from igpt_eval.names import (
    CONCAT,
    PIXELS,
    PIXELS_NATIVE,
    Contrast,
    Metric,
    Probe,
    model_names,
    random_twin,
)
from igpt_eval.predictions import Predictions, prediction_key
from igpt_eval.results import row, summary
from igpt_eval.stats import paired_difference

LINEAR = (Probe.LBFGS, Probe.SGD)
#: The contrast of each pixel control: a model's best layer − that control.
PIXEL_CONTRASTS = {Contrast.BEST_VS_PIXELS: PIXELS, Contrast.BEST_VS_PIXELS_NATIVE: PIXELS_NATIVE}


def has_validation(rows: pd.DataFrame) -> bool:
    """Whether ``rows`` (one model's probe) hold the validation accuracies a layer is chosen
    by (kNN results written by earlier versions have test rows only)."""
    val = rows[(rows.split == "val") & (rows.metric == "accuracy")]
    return bool(len(val)) and bool(val.selected.astype(bool).any())


def chosen(results: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """``{(model, probe): summary}`` for every model and probe of ``results`` whose layer can
    be chosen on validation (see :func:`igpt_eval.results.summary`; its ``best`` and
    ``last`` columns mark the two layers), in order of appearance."""
    rows = results[results.metric == "accuracy"]
    out = {}
    for (model, probe), g in rows.groupby(["model", "probe"], sort=False):
        if has_validation(g):
            out[(model, probe)] = summary(g, probe=probe)
    return out


def _side(s: pd.DataFrame, which: str) -> pd.Series:
    return s[s[which]].iloc[0]


def paired_rows(
    results: pd.DataFrame,
    predictions: Predictions | None,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
) -> list[dict]:
    """The paired-difference rows (see the module docstring) of ``results`` from their
    per-example test ``predictions``; none when there are no predictions, and none for a
    contrast whose predictions are missing."""
    if predictions is None or not len(predictions):
        return []
    sides = chosen(results)
    meta = results.drop_duplicates("model").set_index("model")
    out: list[dict] = []

    def add(contrast: Contrast, a: tuple, ra: pd.Series, b: tuple, rb: pd.Series) -> None:
        ka, kb = prediction_key(*a, ra.site), prediction_key(*b, rb.site)
        if ka not in predictions or kb not in predictions:
            return
        r = paired_difference(
            predictions.correct(ka), predictions.correct(kb), n_boot=n_boot, seed=seed
        )
        out.append(
            row(
                model=a[0],
                model_kind=meta.model_kind.get(a[0]) if "model_kind" in meta else None,
                objective=meta.objective.get(a[0]),
                dataset=meta.dataset.get(a[0]),
                split="test",
                layer=int(ra.layer),
                site=ra.site,
                probe=a[1],
                metric=Metric.DIFF,
                value=r.diff,
                ci_low=r.ci_low,
                ci_high=r.ci_high,
                p_value=r.p_value,
                seed=seed,
                contrast=contrast,
                vs_model=b[0],
                vs_probe=b[1],
                vs_layer=int(rb.layer),
                vs_site=rb.site,
                n_eval=r.n,
                n01=r.n01,
                n10=r.n10,
            )
        )

    models = set(model_names(m for m, _ in sides))
    # The multi-layer probe has one "layer": its only contrast is to the best single layer.
    subjects = [key for key in sides if key[0] in models and key[1] != CONCAT]
    for key in subjects:
        best = _side(sides[key], "best")
        add(Contrast.BEST_VS_LAST, key, best, key, _side(sides[key], "last"))
        others = {c: (px, px) for c, px in PIXEL_CONTRASTS.items()} if key[1] in LINEAR else {}
        others[Contrast.BEST_VS_RANDOM] = (random_twin(key[0]), key[1])
        for contrast, other in others.items():
            if other in sides:
                add(contrast, key, best, other, _side(sides[other], "best"))
        concat = (key[0], CONCAT)
        if key[1] == Probe.LBFGS and concat in sides:
            add(Contrast.CONCAT_VS_BEST, concat, _side(sides[concat], "best"), key, best)
    for i, a in enumerate(subjects):
        for b in subjects[i + 1 :]:
            if a[1] == b[1] and a[0] != b[0]:
                add(Contrast.BEST_VS_BEST, a, _side(sides[a], "best"), b, _side(sides[b], "best"))
    return out
