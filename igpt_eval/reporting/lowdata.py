"""The low-data table and figure, drawn from the results of
:func:`igpt_eval.studies.lowdata.lowdata_study` only: test accuracy (mean ± std over seeds)
of the linear probe (best layer), fine-tuning and the
raw-pixel baseline, against K labels per class, for each model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from igpt_eval.errors import IGPTError
from igpt_eval.reporting.figures import new_figure
from igpt_eval.reporting.templates import render

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def lowdata_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, model, K): mean, std and count over seeds of the test accuracy,
    and the probe layers used (``layers``, e.g. ``"5"`` or ``"4,5"``)."""
    need = {"method", "labels_per_class"}
    if not need <= set(df.columns):
        raise IGPTError("these results hold no low-data rows (run `igpt-eval lowdata`)")
    t = df[(df.split == "test") & (df.metric == "accuracy") & df.method.notna()].copy()
    if t.empty:
        raise IGPTError("the low-data results hold no test accuracies yet")
    t["labels_per_class"] = t.labels_per_class.astype(int)
    g = t.groupby(["method", "model", "labels_per_class"], sort=False)
    s = g.value.agg(mean="mean", std="std", n="count").reset_index()
    s["layers"] = g.layer.agg(lambda x: ",".join(str(int(v)) for v in sorted(set(x)))).values
    s["std"] = s["std"].fillna(0.0)  # one seed: no spread
    return s


def _label(method: str, model: str) -> str:
    return "raw pixels" if method == "raw pixels" else f"{method} ({model})"


def lowdata_table(df: pd.DataFrame) -> str:
    """A markdown table like the paper's low-data table: test accuracy (%) mean ± std over
    seeds, one row per method and model, one column per K; then its caption and
    :func:`lowdata_trends` (``templates/lowdata.md``; no final newline)."""
    s = lowdata_summary(df)
    ks = sorted(s.labels_per_class.unique())
    order = {"linear probe": 0, "fine-tune": 1, "raw pixels": 2}
    keys = s[["method", "model"]].drop_duplicates()
    keys = keys.assign(o=keys.method.map(order).fillna(3)).sort_values(["o", "model"])
    rows = []
    for m, model in zip(keys.method, keys.model, strict=True):
        mine = s[(s.method == m) & (s.model == model)].set_index("labels_per_class")
        cells = []
        for k in ks:
            if k not in mine.index:
                cells.append("–")
                continue
            r = mine.loc[k]
            layer = f" (l{r.layers})" if m == "linear probe" else ""
            cells.append(f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}{layer}")
        rows.append(dict(label=_label(m, model), cells=cells))
    text = render("lowdata", ks=ks, rows=rows, seeds=int(s.n.max()), trends=lowdata_trends(s))
    return text.rstrip("\n")


def lowdata_trends(summary: pd.DataFrame) -> list[dict]:
    """Per method and model, whether its mean test accuracy rises with K (asked of
    fine-tuning too: more labels must never buy less accuracy): ``trend`` is ``"rises"``
    (with the accuracies, ``path``), ``"drop"`` (with the first K where it does not, ``k``,
    and the K before it) or ``"one"`` (one K only). ``summary``: :func:`lowdata_summary`."""
    out = []
    for (m, model), g in summary.groupby(["method", "model"], sort=False):
        g = g.sort_values("labels_per_class")
        ks, acc = list(g.labels_per_class), [100 * v for v in g["mean"]]
        drops = [i for i in range(1, len(ks)) if acc[i] <= acc[i - 1]]
        t = dict(label=_label(m, model), trend="rises", path=[f"{a:.1f}" for a in acc])
        if len(ks) < 2:
            t["trend"] = "one"
        elif drops:
            i = drops[0]
            t |= dict(trend="drop", k=ks[i], acc=f"{acc[i]:.1f}")
            t |= dict(k_before=ks[i - 1], acc_before=f"{acc[i - 1]:.1f}")
        out.append(t)
    return out


def lowdata_figure(df: pd.DataFrame) -> Figure:
    """Test accuracy against K (log axis) with ± std bars: one colour per model, solid for
    the linear probe, dashed for fine-tuning, grey dotted for raw pixels. PNG and SVG."""
    import seaborn as sns

    s = lowdata_summary(df)
    models = [m for m in dict.fromkeys(s.model) if m != "raw pixels"]
    colours = dict(zip(models, sns.color_palette("colorblind", len(models)), strict=True))
    style = {"linear probe": ("-", "o"), "fine-tune": ("--", "s"), "raw pixels": (":", "^")}
    fig = new_figure()
    ax = fig.add_subplot()
    for (m, model), g in s.groupby(["method", "model"], sort=False):
        g = g.sort_values("labels_per_class")
        ls, mk = style.get(m, ("-.", "x"))
        ax.errorbar(
            g.labels_per_class, 100 * g["mean"], yerr=100 * g["std"], ls=ls, marker=mk, ms=5,
            capsize=3, color=colours.get(model, "0.4"), label=_label(m, model),
        )  # fmt: skip
    ax.set_xscale("log")
    ks = sorted(s.labels_per_class.unique())
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("labelled images per class (K)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: no overlap
    ax.set_title("low-data: linear probe vs fine-tuning vs raw pixels", fontsize=10)
    return fig
