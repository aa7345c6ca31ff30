"""Summaries of a results table (DESIGN §5): per-model depth-curve summaries, the comparison
table (best layer, best and last-layer accuracy, gap) and its markdown, and the readers of a
comparison folder's other files (CKA table, models.json).

Used by ``igpt-eval compare`` (which writes these files) and ``igpt-eval report`` (which
draws everything from them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from igpt_eval.errors import IGPTError
from igpt_eval.io import read_json
from igpt_eval.results import PIXELS  # model and probe name of the pixel rows (re-exported)

CKA_COLUMNS = [
    "dataset",
    "split",
    "model_a",
    "layer_a",
    "site_a",
    "model_b",
    "layer_b",
    "site_b",
    "value",
    "n",
]
MODELS_FILE = "models.json"


# --------------------------------------------------------------------------- tables
def probe_summaries(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per model (in order of appearance), :func:`igpt_eval.probes.runner.summary` of its
    L-BFGS probe rows."""
    from igpt_eval.probes.runner import summary

    lb = results[results.probe == "lbfgs"]
    if lb.empty:
        raise IGPTError("the results hold no linear-probe (probe=lbfgs) rows to summarise")
    return {m: summary(lb[lb.model == m]) for m in lb.model.unique()}


def accuracy_rows(results: pd.DataFrame, probe: str) -> pd.DataFrame:
    """Test-accuracy rows of one probe kind (``lbfgs``, ``knn``, ``pixels``), sorted."""
    r = results[(results.probe == probe) & (results.split == "test")]
    return r[r.metric == "accuracy"].sort_values(["model", "layer"])


def _paired(diffs: pd.DataFrame, model: str, probe: str, contrast: str) -> dict:
    """One paired-difference row as ``{diff_pp, ci_low_pp, ci_high_pp, p}`` (NaN if none)."""
    d = diffs[(diffs.model == model) & (diffs.probe == probe) & (diffs.contrast == contrast)]
    if d.empty:
        return dict(diff_pp=np.nan, ci_low_pp=np.nan, ci_high_pp=np.nan, p=np.nan)
    r = d.iloc[0]
    return dict(
        diff_pp=100 * r.value, ci_low_pp=100 * r.ci_low, ci_high_pp=100 * r.ci_high, p=r.p_value
    )


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model: the layer chosen on validation and its test accuracy, the last
    layer's, the gap between them (percentage points) with its paired 95% CI and McNemar p
    (``gap_*``), the chosen layer against the raw pixels likewise (``pixels_*``), and the
    kNN layer chosen on validation with its test accuracy; then a row for the pixel
    baseline when present. Accuracies are fractions, CIs of accuracies bootstrap 95%. Paired
    columns are NaN for results written before per-example predictions were kept, and the
    kNN ones for results without validation kNN rows."""
    from igpt_eval.paired import chosen, differences

    rows = []
    diffs = differences(results)
    sides = chosen(results)
    knn = accuracy_rows(results, "knn")
    pixels = accuracy_rows(results, PIXELS)
    for name, s in probe_summaries(results).items():
        best, last = s[s.best].iloc[0], s[s["last"]].iloc[0]
        k = knn[knn.model == name]
        kb = sides.get((name, "knn"))
        kb = None if kb is None else kb[kb.best].iloc[0]
        gap = _paired(diffs, name, "lbfgs", "best_vs_last")
        px = _paired(diffs, name, "lbfgs", "best_vs_pixels")
        rows.append(
            dict(
                model=name,
                objective=results.loc[results.model == name, "objective"].iloc[0],
                layers=int(s.layer.max()),
                best_layer=int(best.layer),
                best_rel_depth=best.layer / s.layer.max(),
                best_acc=best.test_acc,
                best_ci_low=best.ci_low,
                best_ci_high=best.ci_high,
                last_acc=last.test_acc,
                last_ci_low=last.ci_low,
                last_ci_high=last.ci_high,
                gap_pp=100 * (best.test_acc - last.test_acc),
                gap_ci_low_pp=gap["ci_low_pp"],
                gap_ci_high_pp=gap["ci_high_pp"],
                gap_p=gap["p"],
                pixels_gap_pp=(
                    100 * (best.test_acc - pixels.value.iloc[0]) if len(pixels) else np.nan
                ),
                pixels_ci_low_pp=px["ci_low_pp"],
                pixels_ci_high_pp=px["ci_high_pp"],
                pixels_p=px["p"],
                knn_best_layer=np.nan if kb is None else int(kb.layer),
                knn_best_acc=np.nan if kb is None else kb.test_acc,
                knn_last_acc=np.nan if k.empty else k[k.layer == k.layer.max()].value.iloc[0],
            )
        )
    if len(pixels):
        p = pixels.iloc[0]
        rows.append(
            dict(
                model=PIXELS,
                objective="none",
                best_acc=p.value,
                best_ci_low=p.ci_low,
                best_ci_high=p.ci_high,
            )
        )
    return pd.DataFrame(rows)


def _pct(x, lo=None, hi=None) -> str:
    if x is None or pd.isna(x):
        return "–"
    return f"{100 * x:.2f}%" + ("" if lo is None else f" [{100 * lo:.2f}, {100 * hi:.2f}]")


def _pp(diff_pp, lo_pp, hi_pp, p) -> str:
    """A paired difference cell: ``+0.28 [−0.10, +0.66], p = 0.15`` (points)."""
    from igpt_eval.paired import format_p, signed_pp

    if pd.isna(diff_pp):
        return "–"
    if pd.isna(lo_pp):  # no per-example predictions: the gap alone, untested
        return f"{signed_pp(diff_pp / 100)} (untested)"
    return (
        f"{signed_pp(diff_pp / 100)} [{signed_pp(lo_pp / 100)}, {signed_pp(hi_pp / 100)}], "
        f"{format_p(p)}"
    )


def table_markdown(table: pd.DataFrame) -> str:
    """:func:`comparison_table` as a markdown table (accuracies in %, 95% CIs; differences
    in percentage points with paired 95% CIs and McNemar p-values)."""
    head = (
        "| model | objective | best layer (val) | best test acc [95% CI] | "
        "last layer test acc [95% CI] | best − last (pp) | best − pixels (pp) | "
        "kNN best on val (layer) | kNN last |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in table.itertuples():
        if r.model == PIXELS:
            lines.append(
                f"| raw pixels (linear probe) | – | – | "
                f"{_pct(r.best_acc, r.best_ci_low, r.best_ci_high)} | – | – | – | – | – |"
            )
            continue
        knn = (
            "–" if pd.isna(r.knn_best_acc) else f"{_pct(r.knn_best_acc)} ({int(r.knn_best_layer)})"
        )
        gap = _pp(r.gap_pp, r.gap_ci_low_pp, r.gap_ci_high_pp, r.gap_p)
        px = _pp(r.pixels_gap_pp, r.pixels_ci_low_pp, r.pixels_ci_high_pp, r.pixels_p)
        lines.append(
            f"| {r.model} | {r.objective} | {int(r.best_layer)} of {int(r.layers)} "
            f"({r.best_rel_depth:.2f}) | {_pct(r.best_acc, r.best_ci_low, r.best_ci_high)} | "
            f"{_pct(r.last_acc, r.last_ci_low, r.last_ci_high)} | {gap} | {px} | {knn} | "
            f"{_pct(r.knn_last_acc)} |"
        )
    return "\n".join(lines)


def load_cka(folder: str | Path) -> pd.DataFrame | None:
    """The CKA table of a comparison folder (``None`` when it has none); missing columns
    are one clear error."""
    folder = Path(folder)
    for f in (folder / "cka/cka.parquet", folder / "cka/cka.csv"):
        if f.is_file():
            df = pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f)
            missing = [c for c in CKA_COLUMNS if c not in df.columns]
            if missing:
                raise IGPTError(f"{f} lacks CKA columns {missing}")
            return df
    return None


def load_models(folder: str | Path) -> dict:
    """``models.json`` of a comparison folder (``{}`` when absent)."""
    f = Path(folder) / MODELS_FILE
    if not f.is_file():
        return {}
    return read_json(f)
