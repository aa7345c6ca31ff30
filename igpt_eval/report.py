"""Figures and tables drawn from results files only (DESIGN §5): the depth curve first."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from igpt_eval.io import atomic_write


def _figure(width=6.4, height=4.0):
    # An Agg figure without pyplot: no global state, safe in tests and notebooks alike.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, formats=("png", "svg")) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix in ``formats`` (atomically)."""
    path = Path(path)
    out = []
    for fmt in formats:
        p = path.with_suffix(f".{fmt}")
        with atomic_write(p) as f:
            fig.savefig(f, format=fmt, bbox_inches="tight")
        out.append(p)
    return out


def depth_curve(
    summaries: dict[str, pd.DataFrame], path: str | Path, *, title: str = "", relative: bool = False
) -> list[Path]:
    """Test accuracy (with its 95% CI band) against layer for one or more models.

    ``summaries`` maps a model name to :func:`igpt_eval.probes.runner.summary` output. The
    layer chosen on validation is starred and the last layer drawn hollow. ``relative``
    puts models of different depths on a shared 0..1 axis.
    """
    import seaborn as sns

    fig = _figure()
    ax = fig.add_subplot()
    colours = sns.color_palette("colorblind", len(summaries))
    for (name, s), c in zip(summaries.items(), colours, strict=True):
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
        )
    ax.set_xlabel(
        "relative depth (0 = embeddings, 1 = final ln_f)"
        if relative
        else "layer (0 = embeddings, last = final ln_f)"
    )
    ax.set_ylabel("linear probe test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)
