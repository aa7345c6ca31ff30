"""Summaries of a results table (docs/design.md): per-model depth-curve summaries, the comparison
table (best layer, best and last-layer accuracy, gap) and its markdown, and the readers of a
comparison folder's other files (CKA table, models.json).

Used by ``igpt-eval compare`` (which writes these files) and ``igpt-eval report`` (which
draws everything from them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from igpt_eval.analysis.paired import differences, format_p, paired_lines, signed_pp
from igpt_eval.errors import IGPTError
from igpt_eval.io import read_json
from igpt_eval.names import (
    CONCAT,
    PIXELS,
    PIXELS_NATIVE,
    Contrast,
    Probe,
    model_names,
    random_twin,
)
from igpt_eval.probes.paired import chosen
from igpt_eval.results import CKA_COLUMNS, MODELS_FILE, summary


# --------------------------------------------------------------------------- tables
def probe_summaries(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per model (in order of appearance), :func:`igpt_eval.results.summary` of its
    L-BFGS probe rows; controls (a random-weights twin of a model in the results) are left
    out: :func:`random_summaries` has them."""
    lb = results[results.probe == Probe.LBFGS]
    if lb.empty:
        raise IGPTError("the results hold no linear-probe (probe=lbfgs) rows to summarise")
    return {m: summary(lb[lb.model == m]) for m in model_names(lb.model.unique())}


def random_summaries(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per model of :func:`probe_summaries` whose random-weights twin was probed too, the
    twin's L-BFGS summary (keyed by the *model's* name)."""
    lb = results[results.probe == Probe.LBFGS]
    names = list(lb.model.unique())
    return {
        m: summary(lb[lb.model == random_twin(m)])
        for m in model_names(names)
        if random_twin(m) in names
    }


def concat_summaries(results: pd.DataFrame) -> dict[str, pd.Series]:
    """Per model with a multi-layer probe (``probe = "lbfgs_concat"``), its one summary row
    (``layer`` = the centre, ``site`` the span, test accuracy with CI)."""
    cat = results[results.probe == CONCAT]
    return {m: summary(cat[cat.model == m], probe=CONCAT).iloc[0] for m in cat.model.unique()}


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


def _gap(value: str, prefix: str, gap_pp: float, paired: dict) -> dict:
    """The columns of one gap: ``value`` (the test-accuracy difference in points, known
    without predictions too) and its paired CI and McNemar p as ``{prefix}_ci_low_pp``,
    ``{prefix}_ci_high_pp``, ``{prefix}_p``."""
    return {
        value: gap_pp,
        f"{prefix}_ci_low_pp": paired["ci_low_pp"],
        f"{prefix}_ci_high_pp": paired["ci_high_pp"],
        f"{prefix}_p": paired["p"],
    }


def _acc(prefix: str, r: pd.Series | None) -> dict:
    """``{prefix}_acc``, ``{prefix}_ci_low``, ``{prefix}_ci_high`` from the summary row
    ``r`` (NaN when there is none)."""
    cols = dict(acc="test_acc", ci_low="ci_low", ci_high="ci_high")
    return {f"{prefix}_{c}": np.nan if r is None else r[k] for c, k in cols.items()}


def _control_columns(name: str, best: pd.Series, diffs, controls: dict) -> dict:
    """A model's columns against its controls: each pixel control, the random-weights twin
    (its layer chosen on validation and that layer's test accuracy) and the multi-layer
    probe; NaN where the results lack one."""
    out = {}
    for prefix, px in (("pixels", controls[PIXELS]), ("pixels_native", controls[PIXELS_NATIVE])):
        gap = 100 * (best.test_acc - px.value.iloc[0]) if len(px) else np.nan
        paired = _paired(diffs, name, Probe.LBFGS, Contrast(f"best_vs_{prefix}"))
        out |= _gap(f"{prefix}_gap_pp", prefix, gap, paired)
    twin = controls["random"].get(name)
    tb = None if twin is None else twin[twin.best].iloc[0]
    out |= dict(random_best_layer=np.nan if tb is None else int(tb.layer), **_acc("random", tb))
    gap = np.nan if tb is None else 100 * (best.test_acc - tb.test_acc)
    out |= _gap(
        "random_gap_pp", "random", gap, _paired(diffs, name, Probe.LBFGS, Contrast.BEST_VS_RANDOM)
    )
    cat = controls["concat"].get(name)
    out |= dict(concat_site=None if cat is None else cat.site, **_acc("concat", cat))
    gap = np.nan if cat is None else 100 * (cat.test_acc - best.test_acc)
    out |= _gap(
        "concat_gap_pp", "concat", gap, _paired(diffs, name, CONCAT, Contrast.CONCAT_VS_BEST)
    )
    return out


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per model: the layer chosen on validation and its test accuracy, the last
    layer's, the gap between them (percentage points) with its paired 95% CI and McNemar p
    (``gap_*``), the chosen layer against the raw pixels likewise (``pixels_*``) and
    against the native-resolution pixels (``pixels_native_*``), the random-weights twin's
    layer chosen on validation and its test accuracy (``random_best_layer``,
    ``random_acc``) with the paired gap to it (``random_gap_pp``, ``random_*``), the
    multi-layer probe's test accuracy and its gap to the chosen layer (``concat_*``), and
    the kNN layer chosen on validation with its test accuracy; then a row per pixel
    control present. Accuracies are fractions, CIs of accuracies bootstrap 95%. Paired
    columns are NaN for results written before per-example predictions were kept, a
    control's columns NaN where it was not run, and the kNN ones for results without
    validation kNN rows."""
    rows = []
    diffs = differences(results)
    sides = chosen(results)
    knn = accuracy_rows(results, Probe.KNN)
    controls = {px: accuracy_rows(results, px) for px in (PIXELS, PIXELS_NATIVE)}
    controls |= dict(random=random_summaries(results), concat=concat_summaries(results))
    for name, s in probe_summaries(results).items():
        best, last = s[s.best].iloc[0], s[s["last"]].iloc[0]
        k = knn[knn.model == name]
        kb = sides.get((name, "knn"))
        kb = None if kb is None else kb[kb.best].iloc[0]
        gap = _paired(diffs, name, Probe.LBFGS, Contrast.BEST_VS_LAST)
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
                **_gap("gap_pp", "gap", 100 * (best.test_acc - last.test_acc), gap),
                **_control_columns(name, best, diffs, controls),
                knn_best_layer=np.nan if kb is None else int(kb.layer),
                knn_best_acc=np.nan if kb is None else kb.test_acc,
                knn_last_acc=np.nan if k.empty else k[k.layer == k.layer.max()].value.iloc[0],
            )
        )
    for px in (PIXELS, PIXELS_NATIVE):
        if len(controls[px]):
            p = controls[px].iloc[0]
            rows.append(
                dict(
                    model=px,
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
    if pd.isna(diff_pp):
        return "–"
    if pd.isna(lo_pp):  # no per-example predictions: the gap alone, untested
        return f"{signed_pp(diff_pp / 100)} (untested)"
    return (
        f"{signed_pp(diff_pp / 100)} [{signed_pp(lo_pp / 100)}, {signed_pp(hi_pp / 100)}], "
        f"{format_p(p)}"
    )


#: The comparison table's columns: (header, function of a model's row, table column whose
#: values decide whether it is shown: ``None`` = always). Controls that were not run leave
#: their columns out, so older results give the table they always gave.
_MODEL_CELLS = [
    ("model", lambda r: r.model, None),
    ("objective", lambda r: r.objective, None),
    (
        "best layer (val)",
        lambda r: f"{int(r.best_layer)} of {int(r.layers)} ({r.best_rel_depth:.2f})",
        None,
    ),
    ("best test acc [95% CI]", lambda r: _pct(r.best_acc, r.best_ci_low, r.best_ci_high), None),
    (
        "last layer test acc [95% CI]",
        lambda r: _pct(r.last_acc, r.last_ci_low, r.last_ci_high),
        None,
    ),
    ("best − last (pp)", lambda r: _gap_cell(r, "gap_pp", "gap"), None),
    ("best − pixels (pp)", lambda r: _gap_cell(r, "pixels_gap_pp", "pixels"), None),
    (
        "best − native pixels (pp)",
        lambda r: _gap_cell(r, "pixels_native_gap_pp", "pixels_native"),
        "pixels_native_gap_pp",
    ),
    (
        "random weights: best on val (layer)",
        lambda r: _layer_cell(r.random_acc, r.random_best_layer),
        "random_acc",
    ),
    ("best − random (pp)", lambda r: _gap_cell(r, "random_gap_pp", "random"), "random_acc"),
    (
        "multi-layer probe [95% CI]",
        lambda r: (
            _pct(r.concat_acc, r.concat_ci_low, r.concat_ci_high)
            + ("" if pd.isna(r.concat_acc) else f" ({r.concat_site})")
        ),
        "concat_acc",
    ),
    ("multi-layer − best (pp)", lambda r: _gap_cell(r, "concat_gap_pp", "concat"), "concat_acc"),
    ("kNN best on val (layer)", lambda r: _layer_cell(r.knn_best_acc, r.knn_best_layer), None),
    ("kNN last", lambda r: _pct(r.knn_last_acc), None),
]
#: How the pixel-control rows are named in the table.
CONTROL_LABELS = {
    PIXELS: "raw pixels (linear probe)",
    PIXELS_NATIVE: "raw pixels, native resolution (linear probe)",
}


def _gap_cell(r, value: str, prefix: str) -> str:
    return _pp(
        getattr(r, value),
        getattr(r, f"{prefix}_ci_low_pp"),
        getattr(r, f"{prefix}_ci_high_pp"),
        getattr(r, f"{prefix}_p"),
    )


def _layer_cell(acc, layer) -> str:
    """``83.15% (4)``: a test accuracy and the layer chosen on validation."""
    return "–" if pd.isna(acc) else f"{_pct(acc)} ({int(layer)})"


def table_markdown(table: pd.DataFrame) -> str:
    """:func:`comparison_table` as a markdown table (accuracies in %, 95% CIs; differences
    in percentage points with paired 95% CIs and McNemar p-values). The columns of a
    control (native pixels, random weights, the multi-layer probe) appear only when some
    model has it."""
    models = table[~table.model.isin(list(CONTROL_LABELS))]
    cells = [
        c for c in _MODEL_CELLS if c[2] is None or (c[2] in table and models[c[2]].notna().any())
    ]
    lines = [
        "| " + " | ".join(head for head, _, _ in cells) + " |",
        "|" + "---|" * len(cells),
    ]
    for r in table.itertuples():
        if r.model in CONTROL_LABELS:
            row = [
                CONTROL_LABELS[r.model],
                "–",
                "–",
                _pct(r.best_acc, r.best_ci_low, r.best_ci_high),
            ]
            row += ["–"] * (len(cells) - len(row))
        else:
            row = [cell(r) for _, cell, _ in cells]
        lines.append("| " + " | ".join(row) + " |")
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


def format_summary(
    s: pd.DataFrame, differences: pd.DataFrame | None = None, concat: pd.Series | None = None
) -> str:
    """The terminal table of :func:`igpt_eval.results.summary`; with ``concat`` (the
    multi-layer probe's summary row, :func:`concat_summaries`), one line for it under the
    table; with ``differences`` (the model's results, or their paired-difference rows), the
    paired lines under it: best − last layer, best − each pixel control and − the
    random-weights twin, the multi-layer probe − best, with paired 95% CIs and McNemar's p
    (:func:`igpt_eval.analysis.paired.paired_lines`)."""
    hyper = "C" if s["lr"].isna().all() else "lr"
    lines = [
        f"{'layer':>5}  {'site':<18} {'val acc':>8}  {'test acc [95% CI]':<24} "
        f"{'best ' + hyper:>9} {'iters':>6}"
    ]
    for r in s.itertuples():
        mark = " <- best (val)" if r.best else ""
        mark += " (last)" if r.last else ""
        conv = "" if r.converged else "*"
        h = r.C if hyper == "C" else r.lr
        lines.append(
            f"{r.layer:>5}  {r.site:<18} {100 * r.val_acc:7.2f}%  "
            f"{100 * r.test_acc:6.2f}% [{100 * r.ci_low:5.2f}, {100 * r.ci_high:5.2f}]   "
            f"{h:9.3g} {r.n_iter:>5}{conv}{mark}"
        )
    if concat is not None:
        conv = "" if concat.converged else "*"
        lines.append(
            f"multi-layer probe {concat.site}, around layer {concat.layer} (best on val): val "
            f"{100 * concat.val_acc:.2f}%, test {100 * concat.test_acc:.2f}% "
            f"[{100 * concat.ci_low:.2f}, {100 * concat.ci_high:.2f}], best C "
            f"{concat.C:.3g}, {concat.n_iter}{conv} iters"
        )
    if not (s.converged.all() and (concat is None or concat.converged)):
        lines.append("* the solver stopped before its tolerance (recorded in the results)")
    if differences is not None:
        lines += paired_lines(differences)
    return "\n".join(lines)
