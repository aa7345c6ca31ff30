"""Paired differences between probes on the same test images (docs/design.md, "Probes"): reading and
wording the rows :mod:`igpt_eval.probes.paired` computes.

:func:`differences` selects a results table's paired-difference rows (``metric =
"accuracy_diff"``); :func:`format_difference` and :func:`paired_lines` put them into words
(``+0.28 pp [−0.10, +0.66], McNemar p = 0.15``). The rows themselves, their contrasts and
columns are computed and described in :mod:`igpt_eval.probes.paired`.
"""

from __future__ import annotations

import pandas as pd

from igpt_eval.names import Contrast, Metric
from igpt_eval.results import DIFF_COLUMNS

MINUS = "\N{MINUS SIGN}"  # typeset differences: "best − last", "−0.10"


def differences(results: pd.DataFrame, contrast: str | None = None) -> pd.DataFrame:
    """The paired-difference rows of ``results`` (of one ``contrast`` when given); empty for
    results written before they were computed."""
    d = results[results.metric == Metric.DIFF]
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


#: Contrasts :func:`paired_lines` prints, in this order, and what each compares with.
LINES = {
    Contrast.BEST_VS_LAST: "last",
    Contrast.BEST_VS_PIXELS: "raw pixels",
    Contrast.BEST_VS_PIXELS_NATIVE: "raw pixels at native resolution",
    Contrast.BEST_VS_RANDOM: "random weights",
    Contrast.CONCAT_VS_BEST: "best",
}


def _line(r) -> str:
    """One paired-difference row as its terminal line (see :func:`paired_lines`)."""
    best, other = int(r.layer), int(r.vs_layer)  # floats once a frame has NaN in them
    if r.contrast == "concat_vs_best":
        return f"{r.site} {MINUS} best (layer {other}): {format_difference(r)}"
    if r.contrast == "best_vs_last" and best == other:
        return f"best (layer {best}) is the last layer: no difference to test"
    what = LINES[r.contrast]
    if r.contrast in ("best_vs_last", "best_vs_random"):
        what += f" (layer {other})"
    return f"best (layer {best}) {MINUS} {what}: {format_difference(r)}"


def paired_lines(diffs: pd.DataFrame) -> list[str]:
    """Terminal lines for the paired-difference rows of ``diffs`` (one model) of the
    contrasts in :data:`LINES`: ``best (layer 4) − last (layer 8): +0.28 pp [−0.10, +0.66],
    McNemar p = 0.15``, likewise against the raw pixels, the random-weights twin, and the
    multi-layer probe against the best layer; a note when there are none (results written
    before predictions were kept)."""
    d = differences(diffs)
    d = d[d.contrast.isin(list(LINES))]
    if d.empty:
        return ["no paired differences (these results hold no per-example test predictions)"]
    order = {c: i for i, c in enumerate(LINES)}
    d = d.iloc[d.contrast.map(order).argsort(kind="stable")]
    return [_line(r) for r in d.itertuples()]
