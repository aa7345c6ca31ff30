"""Paired differences between probes on the same test images (DESIGN §5), as tidy rows.

Two accuracies measured on the same test images are compared on those images: per example,
both right, both wrong, or only one right. The difference ``a − b`` gets a paired bootstrap
95% interval and McNemar's exact p-value (:func:`igpt_eval.analysis.paired_difference`),
computed from the per-example test predictions kept beside the results
(:class:`igpt_eval.results.Predictions`). Overlapping marginal intervals are no evidence of
"no difference": the paired interval is the one to read.

Every "best" layer is the one chosen on *validation* (:func:`igpt_eval.probes.runner.summary`:
the highest validation accuracy, the earliest among equals), never on test. The contrasts
(``contrast`` column):

- ``best_vs_last``: for each model and probe (``lbfgs``, ``sgd``, ``knn``), best − last layer;
- ``best_vs_pixels``: for each model's linear probe, best layer − the raw-pixel baseline;
- ``best_vs_best``: for each pair of models (in order of appearance) and each probe both
  have, model A's best − model B's best.

A row names side a in ``model``/``probe``/``layer``/``site`` and side b in ``vs_model``/
``vs_probe``/``vs_layer``/``vs_site``; ``metric = "accuracy_diff"``, ``split = "test"``,
``value`` is the difference (a fraction), ``ci_low``/``ci_high`` its interval, ``p_value``
McNemar's, ``n_eval`` the test images, ``n10``/``n01`` the examples only a / only b gets
right.
"""

from __future__ import annotations

import pandas as pd

from igpt_eval.results import DIFF_COLUMNS, PIXELS, Predictions, prediction_key

DIFF = "accuracy_diff"
LINEAR = ("lbfgs", "sgd")
MINUS = "\N{MINUS SIGN}"  # typeset differences: "best − last", "−0.10"


def has_validation(rows: pd.DataFrame) -> bool:
    """Whether ``rows`` (one model's probe) hold the validation accuracies a layer is chosen
    by (kNN results written by earlier versions have test rows only)."""
    val = rows[(rows.split == "val") & (rows.metric == "accuracy")]
    return bool(len(val)) and bool(val.selected.astype(bool).any())


def chosen(results: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """``{(model, probe): summary}`` for every model and probe of ``results`` whose layer can
    be chosen on validation (see :func:`igpt_eval.probes.runner.summary`; its ``best`` and
    ``last`` columns mark the two layers), in order of appearance."""
    from igpt_eval.probes.runner import summary

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
    from igpt_eval.analysis import paired_difference

    if predictions is None or not len(predictions):
        return []
    sides = chosen(results)
    meta = results.drop_duplicates("model").set_index("model")
    out: list[dict] = []

    def add(contrast: str, a: tuple, ra: pd.Series, b: tuple, rb: pd.Series) -> None:
        ka, kb = prediction_key(*a, ra.site), prediction_key(*b, rb.site)
        if ka not in predictions or kb not in predictions:
            return
        r = paired_difference(
            predictions.correct(ka), predictions.correct(kb), n_boot=n_boot, seed=seed
        )
        out.append(
            dict(
                model=a[0],
                objective=meta.objective.get(a[0]),
                dataset=meta.dataset.get(a[0]),
                split="test",
                layer=int(ra.layer),
                site=ra.site,
                probe=a[1],
                metric=DIFF,
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

    pixels = sides.get((PIXELS, PIXELS))
    models = [key for key in sides if key[0] != PIXELS]
    for key in models:
        s = sides[key]
        add("best_vs_last", key, _side(s, "best"), key, _side(s, "last"))
        if pixels is not None and key[1] in LINEAR:
            add("best_vs_pixels", key, _side(s, "best"), (PIXELS, PIXELS), _side(pixels, "best"))
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            if a[1] == b[1] and a[0] != b[0]:
                add("best_vs_best", a, _side(sides[a], "best"), b, _side(sides[b], "best"))
    return out


def differences(results: pd.DataFrame, contrast: str | None = None) -> pd.DataFrame:
    """The paired-difference rows of ``results`` (of one ``contrast`` when given); empty for
    results written before they were computed."""
    d = results[results.metric == DIFF]
    # Results without such rows lack their columns too: add them (empty), so callers can
    # filter on them alike.
    d = d.reindex(columns=[*d.columns, *(c for c in DIFF_COLUMNS if c not in d.columns)])
    return d if contrast is None else d[d.contrast == contrast]


# --------------------------------------------------------------------------- words
def signed_pp(x: float) -> str:
    """A difference (fraction) in percentage points with its sign: ``+0.28``, ``−1.20``."""
    v = round(100 * x, 2) + 0.0  # + 0.0: no "−0.00" for a zero (or a rounded-off) difference
    return f"{v:+.2f}".replace("-", MINUS)


def format_p(p: float) -> str:
    """``p = 0.15``, ``p = 1`` or ``p < 0.001``."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def resolved(row) -> bool:
    """Whether a difference's 95% interval excludes 0 (only then is it called one)."""
    return bool(row.ci_low > 0 or row.ci_high < 0)


def format_difference(row) -> str:
    """``+0.28 pp [−0.10, +0.66], McNemar p = 0.15`` for one paired-difference row."""
    return (
        f"{signed_pp(row.value)} pp [{signed_pp(row.ci_low)}, {signed_pp(row.ci_high)}], "
        f"McNemar {format_p(row.p_value)}"
    )


def paired_lines(diffs: pd.DataFrame) -> list[str]:
    """Terminal lines for the ``best_vs_last`` and ``best_vs_pixels`` rows of ``diffs`` (one
    model's probe): ``best (layer 4) − last (layer 8): +0.28 pp [−0.10, +0.66], McNemar
    p = 0.15``; a note when there are none (results written before predictions were kept)."""
    d = differences(diffs)
    d = d[d.contrast.isin(["best_vs_last", "best_vs_pixels"])]
    if d.empty:
        return ["no paired differences (these results hold no per-example test predictions)"]
    lines = []
    for r in d.itertuples():
        best = int(r.layer)  # layer columns hold floats once a frame has NaN in them
        if r.contrast == "best_vs_pixels":
            what = "raw pixels"
        elif best == int(r.vs_layer):
            lines.append(f"best (layer {best}) is the last layer: no difference to test")
            continue
        else:
            what = f"last (layer {int(r.vs_layer)})"
        lines.append(f"best (layer {best}) {MINUS} {what}: {format_difference(r)}")
    return lines
