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

PIXELS = "pixels"  # model and probe name of the raw-pixel baseline rows
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


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model: the layer chosen on validation and its test accuracy, the
    last layer's, the gap between them (percentage points), the layer of peak test
    accuracy, and the kNN peak; then a row for the pixel baseline when present.
    Accuracies are fractions; CIs are bootstrap 95%."""
    rows = []
    knn = accuracy_rows(results, "knn")
    for name, s in probe_summaries(results).items():
        best, last = s[s.best].iloc[0], s[s["last"]].iloc[0]
        peak = s.loc[s.test_acc.idxmax()]
        k = knn[knn.model == name]
        kb = k.loc[k.value.idxmax()] if len(k) else None
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
                peak_test_layer=int(peak.layer),
                peak_test_acc=peak.test_acc,
                knn_peak_layer=np.nan if kb is None else int(kb.layer),
                knn_peak_acc=np.nan if kb is None else kb.value,
                knn_last_acc=np.nan if kb is None else k[k.layer == k.layer.max()].value.iloc[0],
            )
        )
    px = accuracy_rows(results, PIXELS)
    if len(px):
        p = px.iloc[0]
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


def table_markdown(table: pd.DataFrame) -> str:
    """:func:`comparison_table` as a markdown table (accuracies in %, 95% CIs)."""
    head = (
        "| model | objective | best layer (val) | best test acc [95% CI] | "
        "last layer test acc [95% CI] | gap (pp) | kNN peak (layer) | kNN last |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in table.itertuples():
        if r.model == PIXELS:
            lines.append(
                f"| raw pixels (linear probe) | – | – | "
                f"{_pct(r.best_acc, r.best_ci_low, r.best_ci_high)} | – | – | – | – |"
            )
            continue
        knn = (
            "–" if pd.isna(r.knn_peak_acc) else f"{_pct(r.knn_peak_acc)} ({int(r.knn_peak_layer)})"
        )
        lines.append(
            f"| {r.model} | {r.objective} | {int(r.best_layer)} of {int(r.layers)} "
            f"({r.best_rel_depth:.2f}) | {_pct(r.best_acc, r.best_ci_low, r.best_ci_high)} | "
            f"{_pct(r.last_acc, r.last_ci_low, r.last_ci_high)} | {r.gap_pp:+.2f} | {knn} | "
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
