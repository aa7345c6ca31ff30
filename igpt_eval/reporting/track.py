"""What ``igpt-eval track`` shows: the terminal table, the figures and the report section of
probe accuracy over training (:mod:`igpt_eval.studies.track` computes them).

Figures: the best layer's test accuracy against validation loss, one line per run
(:func:`track_loss_accuracy`); per run, a heatmap of accuracy by layer and step
(:func:`track_heatmap`) and the depth curve at every snapshot (:func:`track_depth_curves`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from igpt_eval.names import PIXEL_CONTROLS
from igpt_eval.reporting.figures import (
    baseline_of,
    depth_axis,
    draw_baseline,
    model_colours,
    new_figure,
    save_figure,
)
from igpt_eval.reporting.templates import render
from igpt_eval.results import summary
from igpt_eval.studies.track import loss_accuracy_correlation

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def format_track(summ: pd.DataFrame, corr: pd.DataFrame) -> str:
    """The terminal table of :func:`track_summary` and the per-run correlation."""
    lines = [
        f"{'run':<16} {'step':>7} {'val loss':>9}  {'best layer':>10}  "
        f"{'test acc [95% CI]':<24} {'last layer':>10}"
    ]
    for r in summ.itertuples():
        lines.append(
            f"{r.run:<16} {r.step:>7} {r.val_loss:9.4f}  {r.best_layer:>4} of {r.n_layers:<3} "
            f"{100 * r.best_test_acc:6.2f}% [{100 * r.best_ci_low:5.2f}, "
            f"{100 * r.best_ci_high:5.2f}]   {100 * r.last_test_acc:6.2f}%"
        )
    for r in corr.itertuples():
        # Undefined with fewer than 3 snapshots or a constant accuracy (or loss).
        rho = f"{r.spearman_rho:+.2f}" if np.isfinite(r.spearman_rho) else "undefined"
        lines.append(
            f"{r.run}: Spearman rho(val loss, best-layer test acc) = {rho} over "
            f"{r.n_snapshots} snapshots"
        )
    return "\n".join(lines)


def _file_stem(run: str) -> str:
    """A run's name as it appears in file names (``parent/name`` → ``parent-name``)."""
    return run.replace("/", "-")


def track_figures(results: pd.DataFrame, summ: pd.DataFrame, out: str | Path) -> list[Path]:
    """The three track figures into ``out``: best-layer accuracy against validation loss
    (every run), and per run the layer × step heatmap and the overlaid depth curves.
    ``summ`` is :func:`track_summary` of ``results``."""
    out = Path(out)
    colours = model_colours(list(summ.run.unique()))
    drawn = track_loss_accuracy(summ, baseline=baseline_of(results), colours=colours)
    files = save_figure(drawn, out / "track_loss_vs_probe")
    for run in summ.run.unique():
        stem = _file_stem(run)
        best = summ[summ.run == run].set_index("step").best_layer
        files += save_figure(track_heatmap(results, run, best), out / f"track_heatmap-{stem}")
        files += save_figure(track_depth_curves(results, run), out / f"track_depth_curves-{stem}")
    return files


def trend(rho: float) -> str:
    """Whether probe accuracy rises as the loss falls, from Spearman's ``rho`` between
    them: ``"rises"`` (ρ ≤ −0.8), ``"tends"`` (ρ < 0), ``"none"``, or ``"undefined"`` (too
    few distinct snapshots)."""
    if not np.isfinite(rho):
        return "undefined"
    return "rises" if rho <= -0.8 else "tends" if rho < 0 else "none"


def track_markdown(
    results: pd.DataFrame, summ: pd.DataFrame, source: str = "", command: str = ""
) -> str:
    """The report section for track results (``summ``: their :func:`track_summary`): the
    per-snapshot table and the trend words (``templates/track.md``), with the ``command``
    that measured them."""
    corr = loss_accuracy_correlation(summ)
    n_test = results[(results.split == "test") & (results.probe == "lbfgs")].n_eval
    snapshots = [
        dict(
            run=r.run,
            step=r.step,
            val_loss=f"{r.val_loss:.4f}",
            best_layer=r.best_layer,
            n_layers=r.n_layers,
            best=f"{100 * r.best_test_acc:.2f}% [{100 * r.best_ci_low:.2f}, "
            f"{100 * r.best_ci_high:.2f}]",
            last=f"{100 * r.last_test_acc:.2f}%",
        )
        for r in summ.itertuples()
    ]
    trends = [
        dict(
            run=r.run,
            trend=trend(r.spearman_rho),
            rho=f"{r.spearman_rho:+.2f}",
            n_snapshots=r.n_snapshots,
        )
        for r in corr.itertuples()
    ]
    return render(
        "track",
        n_test=f"{int(n_test.iloc[0]):,}" if len(n_test) else None,
        source=source,
        command=command,
        snapshots=snapshots,
        trends=trends,
        runs=[dict(name=run, stem=_file_stem(run)) for run in summ.run.unique()],
    )


def track_loss_accuracy(
    summ: pd.DataFrame,
    *,
    baseline: dict | None = None,
    colours: dict | None = None,
    title: str = "",
) -> Figure:
    """The paper's Figure 3: the best layer's (chosen on validation) linear-probe test
    accuracy against the generative validation loss, one line per run.

    ``summ`` is :func:`igpt_eval.studies.track.track_summary` output. The loss axis runs from high
    to low, so training moves to the right; step 0 (the untrained network, a
    random-weights control) is drawn hollow.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    colours = colours or model_colours(list(summ.run.unique()))
    draw_baseline(ax, baseline)
    for run, g in summ.groupby("run", sort=False):
        g = g.sort_values("step")
        c = colours[run]
        err = 100 * np.vstack([g.best_test_acc - g.best_ci_low, g.best_ci_high - g.best_test_acc])
        ax.errorbar(
            g.val_loss, 100 * g.best_test_acc, yerr=err, fmt="-o", ms=4, color=c, capsize=2,
            label=run,
        )  # fmt: skip
        init = g[g.step == 0]
        if len(init):
            ax.plot(
                init.val_loss, 100 * init.best_test_acc, "o", ms=9, mfc="white", mec=c, mew=1.5,
                label=f"{run}: untrained (step 0)",
            )  # fmt: skip
    ax.invert_xaxis()
    ax.set_xlabel("generative validation loss (nats/token; training moves right)")
    ax.set_ylabel("best layer (chosen on val): probe test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title or "Representation quality vs generative loss", fontsize=10)
    return fig


def track_heatmap(results: pd.DataFrame, run: str, best_layers: pd.Series) -> Figure:
    """Layer × snapshot heatmap of one run's probe test accuracy, the layer chosen on
    validation at each step (``best_layers``, indexed by step) outlined: where the peak sits
    as training goes on."""
    acc = results[(results.run == run) & (results.split == "test")]
    acc = acc[(acc.metric == "accuracy") & ~acc.probe.isin(PIXEL_CONTROLS)]
    grid = acc.pivot_table(index="layer", columns="step", values="value").sort_index()
    best = best_layers
    fig = new_figure(
        width=max(4.0, 0.9 * grid.shape[1] + 2), height=max(3.0, 0.35 * len(grid) + 1.5)
    )
    ax = fig.add_subplot()
    im = ax.imshow(100 * grid.values, origin="lower", aspect="auto", cmap="viridis")
    mid = np.nanmean(grid.values)
    for j, step in enumerate(grid.columns):
        for i in range(len(grid)):
            v = grid.values[i, j]
            colour = "white" if v < mid else "black"
            ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=6, color=colour)
        i = list(grid.index).index(best[step])
        ax.add_patch(_outline(j, i))
    ax.set_xticks(range(grid.shape[1]), [str(s) for s in grid.columns], fontsize=7)
    ax.set_yticks(range(len(grid)), [str(x) for x in grid.index], fontsize=7)
    ax.set_xlabel("training step (snapshot)")
    ax.set_ylabel("layer (0 = embeddings, last = ln_f)")
    fig.colorbar(im, ax=ax, label="probe test accuracy (%)")
    ax.set_title(f"{run}: probe accuracy by layer and step (outlined: chosen on val)", fontsize=9)
    return fig


def _outline(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, ec="red", lw=1.8)


def track_depth_curves(results: pd.DataFrame, run: str) -> Figure:
    """One run's depth curves, one per snapshot, coloured from early (light) to late (dark),
    each with its validation-chosen layer starred."""
    import matplotlib as mpl

    sub = results[(results.run == run) & ~results.probe.isin(PIXEL_CONTROLS)]
    steps = sorted(sub.step.unique())
    cmap = mpl.colormaps["viridis_r"]
    fig = new_figure()
    ax = fig.add_subplot()
    draw_baseline(ax, baseline_of(results[results.run == run]))
    for i, step in enumerate(steps):
        g = sub[sub.step == step]
        s = summary(g)
        c = cmap(0.15 + 0.85 * i / max(1, len(steps) - 1))
        loss = g.val_loss.iloc[0]
        ax.plot(
            s.layer, 100 * s.test_acc, "-o", ms=3, color=c, label=f"step {step} (loss {loss:.3f})"
        )
        b = s[s.best].iloc[0]
        ax.plot(b.layer, 100 * b.test_acc, "*", ms=11, color=c, mec="black")
    depth_axis(ax, False)
    ax.set_ylabel("linear probe test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(f"{run}: depth curve at each snapshot (star: chosen on val)", fontsize=10)
    return fig
