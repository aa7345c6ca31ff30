"""Figures drawn from results files only (docs/design.md): depth curves, kNN, CKA, training.

Every figure is a bare Agg :class:`~matplotlib.figure.Figure` (no pyplot state), written as
PNG and SVG. A model keeps its colour in every figure: pass the same
:func:`model_colours` mapping to each (the raw-pixel baseline is always grey).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.names import PIXEL_CONTROLS, PIXELS, PIXELS_NATIVE
from igpt_eval.reporting.model_figures import read_log

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width=6.4, height=4.0):
    # An Agg figure without pyplot: no global state, safe in tests and notebooks alike.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, formats=("png", "svg")) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix in ``formats`` (atomically). The same
    figure gives the same bytes on every run (no date in the SVG, fixed SVG element ids),
    so regenerating a report changes only the files whose results changed."""
    from matplotlib import rc_context

    path = Path(path)
    out = []
    for fmt in formats:
        p = path.with_suffix(f".{fmt}")
        meta = {"Date": None} if fmt == "svg" else None
        with atomic_write(p) as f, rc_context({"svg.hashsalt": "igpt-eval"}):
            fig.savefig(f, format=fmt, bbox_inches="tight", metadata=meta)
        out.append(p)
    return out


PIXEL_COLOUR = (0.45, 0.45, 0.45)
#: How each pixel control is drawn: colour, line style and label.
BASELINE_STYLE = {
    PIXELS: (PIXEL_COLOUR, "--", "raw pixels (palette-quantised), linear probe"),
    PIXELS_NATIVE: ((0.2, 0.2, 0.2), ":", "raw pixels (native resolution), linear probe"),
}


def model_colours(names) -> dict:
    """A colour per model name, in the given order (seaborn's colour-blind palette)."""
    import seaborn as sns

    names = [n for n in dict.fromkeys(names) if n not in PIXEL_CONTROLS]
    colours = dict(zip(names, sns.color_palette("colorblind", max(len(names), 1)), strict=False))
    colours |= {px: style[0] for px, style in BASELINE_STYLE.items()}
    return colours


def baseline_of(results: pd.DataFrame, probe: str = PIXELS) -> dict | None:
    """A pixel control's test accuracy and CI (``probe``: ``pixels``, the raw-pixel
    baseline, or ``pixels_native``); ``None`` when the results have none."""
    px = results[(results.probe == probe) & (results.split == "test")]
    px = px[px.metric == "accuracy"]
    if px.empty:
        return None
    r = px.iloc[0]
    return dict(
        value=float(r.value),
        ci_low=float(r.ci_low),
        ci_high=float(r.ci_high),
        label=BASELINE_STYLE[probe][2],
        probe=probe,
    )


def baselines_of(results: pd.DataFrame) -> list[dict]:
    """:func:`baseline_of` of every pixel control the results hold."""
    return [b for px in PIXEL_CONTROLS if (b := baseline_of(results, px)) is not None]


def draw_baseline(ax, baseline: dict | list[dict] | None) -> None:
    """A horizontal line with its CI band per baseline (one dict or a list of them)."""
    for b in [baseline] if isinstance(baseline, dict) else baseline or []:
        colour, ls, _ = BASELINE_STYLE[b.get("probe", PIXELS)]
        label = f"{b['label']}: {100 * b['value']:.1f}%"
        ax.axhline(100 * b["value"], color=colour, ls=ls, lw=1.2, label=label)
        ax.axhspan(100 * b["ci_low"], 100 * b["ci_high"], color=colour, alpha=0.12, lw=0)


def depth_axis(ax, relative: bool) -> None:
    """The depth axis: relative (0..1), or layer numbers with integer ticks only."""
    if not relative:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(
        "relative depth (0 = embeddings, 1 = final ln_f)"
        if relative
        else "layer (0 = embeddings, last = final ln_f)"
    )


def depth_curve(
    summaries: dict[str, pd.DataFrame],
    *,
    title: str = "",
    relative: bool = False,
    baseline: dict | list[dict] | None = None,
    colours: dict | None = None,
    random: dict[str, pd.DataFrame] | None = None,
    concat: dict[str, pd.Series] | None = None,
) -> Figure:
    """Test accuracy (with its 95% CI band) against layer for one or more models; returns
    the figure (:func:`save_figure` writes it).

    ``summaries`` maps a model name to :func:`igpt_eval.results.summary` output. The
    layer chosen on validation is starred and the last layer drawn hollow. ``relative``
    puts models of different depths on a shared 0..1 axis. ``baseline`` (see
    :func:`baseline_of`; a list: :func:`baselines_of`) is drawn as a horizontal line with
    its CI band; ``colours`` maps model names to colours (default :func:`model_colours`).
    ``random`` maps a model name to its random-weights twin's summary
    (:func:`igpt_eval.reporting.tables.random_summaries`), drawn dotted in the model's colour;
    ``concat`` to its multi-layer probe's summary row
    (:func:`igpt_eval.reporting.tables.concat_summaries`), a diamond at the centre layer.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    colours = colours or model_colours(list(summaries))
    draw_baseline(ax, baseline)
    for name, s in summaries.items():
        c = colours[name]
        depth = s.layer.max()
        x = s.layer / depth if relative else s.layer
        ax.plot(x, 100 * s.test_acc, "-o", color=c, ms=4, label=name)
        ax.fill_between(x, 100 * s.ci_low, 100 * s.ci_high, color=c, alpha=0.2, lw=0)
        b = s[s.best].iloc[0]
        ax.plot(
            (b.layer / depth) if relative else b.layer,
            100 * b.test_acc,
            "*",
            ms=14,
            color=c,
            mec="black",
            label=f"{name}: best on val (layer {b.layer})",
        )
        last = s[s["last"]].iloc[0]
        ax.plot(
            (last.layer / depth) if relative else last.layer,
            100 * last.test_acc,
            "o",
            ms=9,
            mfc="none",
            mec=c,
            mew=2,
            label=f"{name}: last layer ({last.layer})",
        )
        _draw_controls(ax, name, c, depth if relative else 1, random, concat)
    depth_axis(ax, relative)
    ax.set_ylabel("linear probe test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0
    )  # outside: never over the data
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def _draw_controls(ax, name: str, colour, scale, random, concat) -> None:
    """A model's random-weights twin (dotted) and multi-layer probe (a diamond with its CI)
    on a depth-curve axis, x divided by ``scale``."""
    if random and name in random:
        t = random[name]
        ax.plot(
            t.layer / scale, 100 * t.test_acc, ":x", ms=4, lw=1.2, color=colour,
            label=f"{name}: random weights",
        )  # fmt: skip
    if concat and name in concat:
        r = concat[name]
        err = 100 * np.array([[r.test_acc - r.ci_low], [r.ci_high - r.test_acc]])
        ax.errorbar(
            r.layer / scale, 100 * r.test_acc, yerr=err, fmt="D", ms=7, color=colour,
            mec="black", capsize=3, label=f"{name}: {r.site}",
        )  # fmt: skip


def knn_curve(results: pd.DataFrame, *, colours: dict | None = None, title: str = "") -> Figure:
    """kNN test accuracy (95% CI band) against relative depth, one line per model, with the
    linear probe of the same layers drawn thin and dashed for reference."""
    knn = results[(results.probe == "knn") & (results.split == "test")]
    knn = knn[knn.metric == "accuracy"]
    lin = results[(results.probe == "lbfgs") & (results.split == "test")]
    lin = lin[lin.metric == "accuracy"]
    colours = colours or model_colours(list(knn.model.unique()))
    fig = new_figure()
    ax = fig.add_subplot()
    draw_baseline(ax, baselines_of(results))
    for name, g in knn.groupby("model", sort=False):
        g = g.sort_values("layer")
        x = g.layer / g.layer.max()
        ax.plot(x, 100 * g.value, "-o", ms=4, color=colours[name], label=f"{name}: kNN")
        ax.fill_between(x, 100 * g.ci_low, 100 * g.ci_high, color=colours[name], alpha=0.2, lw=0)
        lg = lin[lin.model == name].sort_values("layer")
        if len(lg):
            ax.plot(
                lg.layer / lg.layer.max(),
                100 * lg.value,
                "--",
                lw=1,
                color=colours[name],
                alpha=0.7,
                label=f"{name}: linear probe",
            )
    setting = f" (k={knn.k.iloc[0]:g}, T={knn.temperature.iloc[0]:g})" if "k" in knn else ""
    depth_axis(ax, True)
    ax.set_ylabel("weighted kNN test accuracy (%)" + setting)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title or "kNN (cosine, DINO weighting) on every layer", fontsize=10)
    return fig


def cka_vmin(cka: pd.DataFrame) -> float:
    """The low end of one colour scale for every CKA heatmap of ``cka``, fitted to the
    values off the diagonal (which is 1 by definition): mean-pooled features lie in a
    narrow high band that a 0.5-1 scale would paint one colour."""
    off = cka[(cka.model_a != cka.model_b) | (cka.layer_a != cka.layer_b)].value
    lo = float(np.nanmin(off)) if len(off) else 0.0
    return max(0.0, np.floor(100 * lo) / 100 - 0.01)


def cka_heatmap(
    cka: pd.DataFrame, model_a: str, model_b: str, *, vmin: float = 0.0, vmax: float = 1.0
) -> Figure:
    """Linear CKA between the layers of ``model_a`` (rows) and ``model_b`` (columns), on a
    ``vmin``..``vmax`` colour scale (pass the same range to every heatmap of a report so
    that colours compare; fit it to the values, or mean-pooled features' 0.84-0.98 all look
    alike), annotated when there are few layers."""
    d = cka[(cka.model_a == model_a) & (cka.model_b == model_b)]
    if d.empty:
        raise IGPTError(f"the CKA table has no rows for {model_a} vs {model_b}")
    M = d.pivot(index="layer_a", columns="layer_b", values="value").sort_index(axis=0)
    M = M.sort_index(axis=1)
    fig = new_figure(5.6, 4.6)
    ax = fig.add_subplot()
    im = ax.imshow(M.to_numpy(float), vmin=vmin, vmax=vmax, cmap="viridis", origin="lower")
    fig.colorbar(im, ax=ax, label="linear CKA")
    if M.size <= 16 * 16:
        for (i, j), v in np.ndenumerate(M.to_numpy(float)):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="black" if v > vmin + 0.6 * (vmax - vmin) else "white",
            )
    ax.set_xticks(range(M.shape[1]), M.columns)
    ax.set_yticks(range(M.shape[0]), M.index)
    ax.set_xlabel(f"layer of {model_b} (0 = embeddings)")
    ax.set_ylabel(f"layer of {model_a} (0 = embeddings)")
    what = model_a if model_a == model_b else f"{model_a} vs {model_b}"
    # Two short lines over the axes alone: a long one ran into the colour bar.
    ax.set_title(f"linear CKA between layers\n{what} (test split, n={d.n.iloc[0]})", fontsize=9)
    return fig


def training_curves(logs: dict, *, colours: dict | None = None) -> Figure:
    """Training curves of several runs side by side (``logs`` maps a model name to its
    ``train_log.csv``): moving-average train loss and validation loss, nats per token. One
    panel per model: AR and BERT losses measure different things and share no scale."""
    colours = colours or model_colours(list(logs))
    fig = new_figure(4.2 * len(logs), 3.6)
    axes = fig.subplots(1, len(logs), squeeze=False)[0]
    for ax, (name, f) in zip(axes, logs.items(), strict=True):
        log = read_log(f)
        window = max(1, min(50, len(log) // 20))
        c = colours[name]
        ax.plot(log.step, log.train_loss, color=c, alpha=0.2, lw=0.7)
        ax.plot(
            log.step,
            log.train_loss.rolling(window, min_periods=1).mean(),
            color=c,
            lw=1.8,
            label=f"train (moving average, {window} steps)",
        )
        val = log.dropna(subset=["val_loss"])
        ax.plot(val.step, val.val_loss, "o-", color="black", ms=3, lw=1, label="validation")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats / token)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def palette_swatch(palette, *, title: str = "") -> Figure:
    """The palette's ``k`` colours as a strip of swatches labelled with their token ids."""
    rgb = np.clip(np.round(127.5 * (palette.centers + 1)), 0, 255).astype(np.uint8)
    rgb = np.repeat(rgb, 3, axis=1) if rgb.shape[1] == 1 else rgb  # grey → RGB
    cols = min(palette.k, 32)
    rows = -(-palette.k // cols)
    grid = np.full((rows * cols, 3), 255, np.uint8)
    grid[: palette.k] = rgb
    fig = new_figure(0.45 * cols + 0.5, 0.55 * rows + 0.6)
    ax = fig.add_subplot()
    ax.imshow(grid.reshape(rows, cols, 3), interpolation="nearest")
    for i in range(palette.k):
        ax.text(
            i % cols,
            i // cols,
            str(i),
            ha="center",
            va="center",
            fontsize=6,
            color="white" if rgb[i].mean() < 128 else "black",
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"palette: {palette.k} colours (token id on each)", fontsize=9)
    return fig


# ------------------------------------------------------------------ training dynamics (track)
