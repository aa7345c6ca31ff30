"""The sentences of a report, computed from the numbers they state.

:func:`shape_words` says what a depth curve does from its paired best − last difference
alone (a dip within noise decides nothing); :func:`describe_depth_curve`, :func:`describe_knn`,
:func:`describe_cka`, :func:`random_words` and :func:`concat_words` turn a summary and its
paired-difference rows into markdown, so that no number in ``reports/README.md`` is typed
by hand (:mod:`igpt_eval.reporting.report` puts them together).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from igpt_eval.analysis.paired import differences, format_difference, resolved
from igpt_eval.names import Contrast, Probe
from igpt_eval.probes.paired import chosen
from igpt_eval.reporting.tables import accuracy_rows


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _diff_row(diffs: pd.DataFrame | None, contrast: str):
    """The first paired-difference row of ``contrast`` in ``diffs`` (None when absent)."""
    if diffs is None or diffs.empty:
        return None
    d = diffs[diffs.contrast == contrast]
    return None if d.empty else d.iloc[0]


def _reversed(r: pd.Series) -> pd.Series:
    """The paired row ``r`` (a − b) read as b − a: value and interval negated."""
    out = r.copy()
    out["value"], out["ci_low"], out["ci_high"] = -r.value, -r.ci_high, -r.ci_low
    return out


def compare_words(r, subject: str, other: str) -> str:
    """``subject`` against ``other`` in words, from the paired-difference row ``r``
    (subject − other): "significantly below/above" only when the 95% CI excludes 0, else
    "not distinguishable from"; the difference, its CI and McNemar's p follow."""
    if not resolved(r):
        return f"{subject} is not distinguishable from {other} ({format_difference(r)})"
    way = "above" if r.value > 0 else "below"
    return f"{subject} is significantly {way} {other} ({format_difference(r)})"


def shape_words(best: int, last: int, r) -> str:
    """What a depth curve does, decided by the paired best − last difference ``r`` alone
    (the layer ``best`` chosen on validation, ``last`` the network's last layer; ``r`` None
    when the results hold no per-example predictions). "Peaks inside the network" needs the
    chosen layer strictly inside and its paired 95% CI over the last layer above 0; a dip or
    a bump within noise decides nothing."""
    if best == last:
        return "does not peak inside the network: validation chooses the last layer"
    if r is None:
        return "is untested for a peak inside the network (no per-example predictions)"
    if resolved(r) and r.value > 0:
        if best == 0:
            return "does not peak inside the network: it falls from the embeddings"
        return f"**peaks inside the network**, at layer {best}"
    if resolved(r):
        return (f"does not peak inside the network: the last layer is significantly above "
                f"layer {best}, the one validation chose")  # fmt: skip
    return f"is **flat** from layer {best} to the last layer"


def describe_depth_curve(
    name: str, s: pd.DataFrame, baseline: dict | None, diffs: pd.DataFrame | None = None
) -> str:
    """A paragraph on one model's linear-probe depth curve (``s`` from
    :func:`igpt_eval.results.summary`), every number taken from ``s`` and from the model's
    paired-difference rows ``diffs`` (:mod:`igpt_eval.analysis.paired`; ``None`` or empty for
    results without per-example predictions: gaps are then given but said to be untested).
    The layer it names is the one chosen on validation, never the test maximum."""
    first, last = s.iloc[0], s.iloc[-1]
    best = s[s.best].iloc[0]
    L = int(last.layer)
    if int(best.layer) == int(first.layer):  # nothing after the embeddings beats them
        opening = (
            f"**{name}**: validation chooses the embeddings (layer {int(first.layer)}), "
            f"{_pct(first.test_acc)} on test; no layer of the {L} above them is chosen, "
            f"and the curve ends at {_pct(last.test_acc)} at the last layer."
        )
    else:
        opening = (
            f"**{name}**: test accuracy goes from {_pct(first.test_acc)} at the embeddings "
            f"(layer 0) to {_pct(best.test_acc)} at layer {int(best.layer)} of {L}, the layer "
            f"chosen on validation (relative depth {best.layer / L:.2f}), and ends at "
            f"{_pct(last.test_acc)} at the last layer."
        )
    text = [opening]
    r = _diff_row(diffs, Contrast.BEST_VS_LAST)
    if int(best.layer) == L:
        text.append("The layer chosen on validation is the last layer.")
    elif r is not None:
        text.append(compare_words(_reversed(r), "The last layer", "the chosen layer") + ".")
    else:
        gap = 100 * (best.test_acc - last.test_acc)
        text.append(
            f"The last layer is {abs(gap):.2f} points {'below' if gap >= 0 else 'above'} it on "
            "test; untested (these results hold no per-example predictions)."
        )
    text.append(f"The curve {shape_words(int(best.layer), L, r)}.")
    r = _diff_row(diffs, Contrast.BEST_VS_PIXELS)
    if r is not None:
        text.append(compare_words(r, "Its chosen layer", "the raw pixels") + ".")
    elif baseline is not None:
        d = 100 * (best.test_acc - baseline["value"])
        text.append(
            f"Its chosen layer is {abs(d):.2f} points {'above' if d >= 0 else 'below'} the "
            f"raw-pixel baseline ({_pct(baseline['value'])}); untested (no per-example "
            "predictions)."
        )
    r = _diff_row(diffs, Contrast.BEST_VS_PIXELS_NATIVE)
    if r is not None:
        text.append(compare_words(r, "It", "the raw pixels at native resolution") + ".")
    text += [w for w in (random_words(diffs), concat_words(diffs)) if w]
    return " ".join(text)


def random_words(diffs: pd.DataFrame | None) -> str:
    """Whether a model beats its random-weights twin, from its ``best_vs_random`` row
    (empty when there is none): "beats" or "falls below" only when the paired 95% CI
    excludes 0, else "is not distinguishable from"."""
    r = _diff_row(diffs, Contrast.BEST_VS_RANDOM)
    if r is None:
        return ""
    twin = (
        f"its random-weights twin (the same architecture untrained, probed alike; layer "
        f"{int(r.vs_layer)} chosen on validation)"
    )
    if not resolved(r):
        verb = "It does not beat"
        twin += ": the two are not distinguishable"
    else:
        verb = "It beats" if r.value > 0 else "It falls below"
    return f"{verb} {twin} ({format_difference(r)})."


def concat_words(diffs: pd.DataFrame | None) -> str:
    """The multi-layer probe against the chosen layer alone, from its ``concat_vs_best``
    row (empty when there is none)."""
    r = _diff_row(diffs, Contrast.CONCAT_VS_BEST)
    if r is None:
        return ""
    return compare_words(r, f"The multi-layer probe ({r.site})", "the chosen layer alone") + "."


def describe_knn(results: pd.DataFrame) -> list[str]:
    """A sentence per model on its kNN curve: the layer chosen on validation (validation
    queries against a train-only bank), its test accuracy, the last layer's with the
    paired difference, and the linear probe's chosen layer beside it. Results without
    validation kNN rows (written by earlier versions) name no kNN layer."""
    knn = accuracy_rows(results, "knn")
    sides = chosen(results)
    diffs = differences(results, Contrast.BEST_VS_LAST)
    out = []
    for name, g in knn.groupby("model", sort=False):
        last = g[g.layer == g.layer.max()].iloc[0]
        s = sides.get((name, "knn"))
        if s is None:
            out.append(
                f"- **{name}**: kNN test accuracy goes from {_pct(g.value.iloc[0])} (layer "
                f"{int(g.layer.iloc[0])}) to {_pct(last.value)} (last layer). These "
                "results have no validation kNN rows (an earlier version wrote them), so no "
                "kNN layer is named; rerun `igpt-eval compare`."
            )
            continue
        b = s[s.best].iloc[0]
        line = (
            f"- **{name}**: kNN layer chosen on validation: layer {int(b.layer)}, "
            f"{_pct(b.test_acc)} on test"
        )
        last_words = f"the last layer ({_pct(last.value)})"
        r = _diff_row(
            diffs[(diffs.model == name) & (diffs.probe == Probe.KNN)], Contrast.BEST_VS_LAST
        )
        if int(b.layer) == int(last.layer):
            line += ", the last layer"
        elif r is not None:
            line += "; " + compare_words(_reversed(r), last_words, "it")
        else:
            line += f"; {last_words}, untested"
        lp = sides.get((name, "lbfgs"))
        if lp is not None:
            lb = lp[lp.best].iloc[0]
            line += (
                f"; the linear probe's layer chosen on validation (layer {int(lb.layer)}) has "
                f"{_pct(lb.test_acc)}"
            )
        out.append(line + f"; the kNN curve {shape_words(int(b.layer), int(last.layer), r)}.")
    return out


def describe_cka(cka: pd.DataFrame) -> list[str]:
    """Sentences on CKA: how fast each model's representation drifts with depth, and how
    alike two models are at the same relative depth."""
    out = []
    for (a, b), g in cka.groupby(["model_a", "model_b"], sort=False):
        M = g.pivot(index="layer_a", columns="layer_b", values="value")
        if a == b:
            adj = [M.iloc[i, i + 1] for i in range(len(M) - 1)]
            out.append(
                f"- **{a}**: CKA between neighbouring layers is {min(adj):.2f}–{max(adj):.2f} "
                f"(mean {np.mean(adj):.2f}); embeddings vs last layer {M.iloc[0, -1]:.2f}."
            )
        else:
            # Layers at the same relative depth (nearest when the depths differ).
            rel_b = M.columns.to_numpy() / M.columns.max()
            match = [
                M.iloc[i, int(np.argmin(abs(rel_b - la / M.index.max())))]
                for i, la in enumerate(M.index)
            ]
            lo, hi = int(np.argmin(match)), int(np.argmax(match))
            out.append(
                f"- **{a} vs {b}** at the same relative depth: CKA from {match[lo]:.2f} "
                f"(layer {M.index[lo]} of {a}) to {match[hi]:.2f} (layer {M.index[hi]}); "
                f"mean {np.mean(match):.2f}."
            )
    return out
