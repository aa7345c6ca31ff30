"""What a report says of its numbers: the verdicts and the formatted numbers behind its
sentences, which ``templates/_words.md`` puts into words.

:func:`shape_of` says what a depth curve does from its paired best − last difference alone
(a dip within noise decides nothing); :func:`depth_curve_view`, :func:`knn_views` and
:func:`cka_views` gather what one model's paragraph or line states, so that no number in
``reports/README.md`` is typed by hand (:mod:`igpt_eval.reporting.report` puts them
together). :func:`describe_depth_curve`, :func:`describe_knn`, :func:`random_words` and
:func:`shape_words` render them alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from igpt_eval.analysis.paired import differences, format_difference, resolved
from igpt_eval.names import Contrast, Probe
from igpt_eval.probes.paired import chosen
from igpt_eval.reporting.tables import accuracy_rows
from igpt_eval.reporting.templates import pct, render


@dataclass(frozen=True)
class Difference:
    """A paired difference (a − b) as the words need it: its numbers (``text``,
    :func:`~igpt_eval.analysis.paired.format_difference`), whether its 95% CI excludes 0
    (``resolved``: only then is it called one) and whether a is above b (``above``)."""

    text: str
    resolved: bool
    above: bool


def difference(r) -> Difference | None:
    """The paired-difference row ``r`` as a :class:`Difference` (None for None)."""
    if r is None:
        return None
    return Difference(format_difference(r), resolved(r), bool(r.value > 0))


@dataclass(frozen=True)
class Gap:
    """An untested difference a − b in points: its size (``points``, unsigned) and whether
    a is ahead (``ahead``: a ≥ b)."""

    points: str
    ahead: bool


def gap(points: float) -> Gap:
    return Gap(f"{abs(points):.2f}", bool(points >= 0))


def _diff_row(diffs: pd.DataFrame | None, contrast: str):
    """The first paired-difference row of ``contrast`` in ``diffs`` (None when absent)."""
    if diffs is None or diffs.empty:
        return None
    d = diffs[diffs.contrast == contrast]
    return None if d.empty else d.iloc[0]


def _reversed(r: pd.Series | None) -> pd.Series | None:
    """The paired row ``r`` (a − b) read as b − a: value and interval negated."""
    if r is None:
        return None
    out = r.copy()
    out["value"], out["ci_low"], out["ci_high"] = -r.value, -r.ci_high, -r.ci_low
    return out


def shape_of(best: int, last: int, r) -> str:
    """What a depth curve does, decided by the paired best − last difference ``r`` alone
    (the layer ``best`` chosen on validation, ``last`` the network's last layer; ``r`` None
    when the results hold no per-example predictions): ``"last chosen"``, ``"untested"``,
    ``"peaks"`` (the chosen layer strictly inside and its paired 95% CI over the last layer
    above 0), ``"falls"`` (likewise, but the embeddings chosen), ``"last above"`` (the last
    layer significantly above the chosen one) or ``"flat"``: a dip or a bump within noise
    decides nothing."""
    if best == last:
        return "last chosen"
    if r is None:
        return "untested"
    if resolved(r) and r.value > 0:
        return "falls" if best == 0 else "peaks"
    return "last above" if resolved(r) else "flat"


def shape_words(best: int, last: int, r) -> str:
    """:func:`shape_of` in words (``"is **flat** from layer 3 to the last layer"``)."""
    return render("_words.shape", shape=shape_of(best, last, r), best=best)


def _random(diffs: pd.DataFrame | None) -> dict | None:
    """The ``best_vs_random`` row of a model: the twin's layer chosen on validation and the
    difference (None when there is none)."""
    r = _diff_row(diffs, Contrast.BEST_VS_RANDOM)
    return None if r is None else dict(layer=int(r.vs_layer), d=difference(r))


def random_words(diffs: pd.DataFrame | None) -> str:
    """Whether a model beats its random-weights twin, from its ``best_vs_random`` row
    (empty when there is none): "beats" or "falls below" only when the paired 95% CI
    excludes 0, else "is not distinguishable from"."""
    twin = _random(diffs)
    return "" if twin is None else render("_words.random", twin=twin)


def depth_curve_view(
    name: str, s: pd.DataFrame, baseline: dict | None, diffs: pd.DataFrame | None = None
) -> dict:
    """What the paragraph on one model's linear-probe depth curve states (``s`` from
    :func:`igpt_eval.results.summary`), every number taken from ``s`` and from the model's
    paired-difference rows ``diffs`` (:mod:`igpt_eval.analysis.paired`; ``None`` or empty for
    results without per-example predictions: gaps are then given but said to be untested).
    The layer it names is the one chosen on validation, never the test maximum."""
    first, last = s.iloc[0], s.iloc[-1]
    best = s[s.best].iloc[0]
    L, b = int(last.layer), int(best.layer)
    r = _diff_row(diffs, Contrast.BEST_VS_LAST)
    pixels = _diff_row(diffs, Contrast.BEST_VS_PIXELS)
    concat = _diff_row(diffs, Contrast.CONCAT_VS_BEST)
    return dict(
        name=name,
        n_layers=L,
        first_layer=int(first.layer),
        first=pct(first.test_acc),
        best_layer=b,
        best=pct(best.test_acc),
        depth=f"{best.layer / L:.2f}",
        last=pct(last.test_acc),
        embeddings_chosen=b == int(first.layer),
        last_vs_chosen=difference(_reversed(r)),
        last_gap=gap(100 * (best.test_acc - last.test_acc)),
        shape=shape_of(b, L, r),
        pixels=difference(pixels),
        baseline=None
        if baseline is None
        else dict(gap=gap(100 * (best.test_acc - baseline["value"])), acc=pct(baseline["value"])),
        native=difference(_diff_row(diffs, Contrast.BEST_VS_PIXELS_NATIVE)),
        random=_random(diffs),
        concat=None if concat is None else dict(site=concat.site, d=difference(concat)),
    )


def describe_depth_curve(
    name: str, s: pd.DataFrame, baseline: dict | None, diffs: pd.DataFrame | None = None
) -> str:
    """The paragraph on one model's depth curve (:func:`depth_curve_view`), one line."""
    return render("_words.depth_curve", c=depth_curve_view(name, s, baseline, diffs))


def knn_views(results: pd.DataFrame) -> list[dict]:
    """Per model, what its kNN line states: the layer chosen on validation (validation
    queries against a train-only bank), its test accuracy, the last layer's with the
    paired difference, and the linear probe's chosen layer beside it. Results without
    validation kNN rows (written by earlier versions) name no kNN layer (``chosen`` False)."""
    knn = accuracy_rows(results, "knn")
    sides = chosen(results)
    diffs = differences(results, Contrast.BEST_VS_LAST)
    out = []
    for name, g in knn.groupby("model", sort=False):
        last = g[g.layer == g.layer.max()].iloc[0]
        view = dict(name=name, last=pct(last.value), chosen=False)
        s = sides.get((name, "knn"))
        if s is None:
            out.append(view | dict(first=pct(g.value.iloc[0]), first_layer=int(g.layer.iloc[0])))
            continue
        b = s[s.best].iloc[0]
        mine = diffs[(diffs.model == name) & (diffs.probe == Probe.KNN)]
        r = _diff_row(mine, Contrast.BEST_VS_LAST)
        lp = sides.get((name, "lbfgs"))
        lb = None if lp is None else lp[lp.best].iloc[0]
        view |= dict(
            chosen=True,
            best_layer=int(b.layer),
            best=pct(b.test_acc),
            best_is_last=int(b.layer) == int(last.layer),
            last_vs_chosen=difference(_reversed(r)),
            linear=None if lb is None else dict(layer=int(lb.layer), acc=pct(lb.test_acc)),
            shape=shape_of(int(b.layer), int(last.layer), r),
        )
        out.append(view)
    return out


def describe_knn(results: pd.DataFrame) -> list[str]:
    """A line per model on its kNN curve (:func:`knn_views`)."""
    return [render("_words.knn", k=k) for k in knn_views(results)]


def cka_views(cka: pd.DataFrame) -> list[dict]:
    """Per pair of models in the CKA table, its numbers: for a model with itself, how fast
    its representation drifts with depth (CKA of neighbouring layers, embeddings vs last);
    for two models, how alike they are at the same relative depth (``same`` False)."""
    out = []
    for (a, b), g in cka.groupby(["model_a", "model_b"], sort=False):
        M = g.pivot(index="layer_a", columns="layer_b", values="value")
        if a == b:
            adj = [M.iloc[i, i + 1] for i in range(len(M) - 1)]
            out.append(
                dict(
                    same=True,
                    a=a,
                    low=f"{min(adj):.2f}",
                    high=f"{max(adj):.2f}",
                    mean=f"{np.mean(adj):.2f}",
                    ends=f"{M.iloc[0, -1]:.2f}",
                )
            )
            continue
        # Layers at the same relative depth (nearest when the depths differ).
        rel_b = M.columns.to_numpy() / M.columns.max()
        match = [
            M.iloc[i, int(np.argmin(abs(rel_b - la / M.index.max())))]
            for i, la in enumerate(M.index)
        ]
        lo, hi = int(np.argmin(match)), int(np.argmax(match))
        out.append(
            dict(
                same=False,
                a=a,
                b=b,
                low=f"{match[lo]:.2f}",
                low_layer=M.index[lo],
                high=f"{match[hi]:.2f}",
                high_layer=M.index[hi],
                mean=f"{np.mean(match):.2f}",
            )
        )
    return out
