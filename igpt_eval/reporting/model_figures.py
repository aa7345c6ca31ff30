"""Figures of one trained model: its training curve and grids of the images it drew
(:mod:`igpt_eval.studies.samples` draws them; nothing here runs a model).

Each function returns its :class:`matplotlib.figure.Figure`, drawn on a bare Agg canvas,
never through ``pyplot``: nothing here touches the global backend or leaves figures open, so
they are safe in notebooks (a cell ending in one shows it), tests and headless machines
alike. :func:`save_png` writes one atomically.

Example::

    save_png(loss_curve("runs/ar/train_log.csv"), "runs/ar/loss_curve.png")
    completion_grid(complete_images(model, palette, test_tokens, n=8))  # a Figure
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.studies.samples import Completions, Sampling

_MIN_SIDE = 64  # upscale small images (nearest) to at least this many pixels a side


def save_png(fig, out_png: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``out_png`` (atomically); returns the path."""
    out_png = Path(out_png)
    with atomic_write(out_png, "wb") as f:
        fig.savefig(f, format="png", dpi=fig.dpi, bbox_inches="tight")
    return out_png


def read_log(log_csv: str | Path):
    """``train_log.csv`` as a DataFrame (``val_loss`` is NaN except on evaluation steps)."""
    log_csv = Path(log_csv)
    try:
        log = pd.read_csv(log_csv)
    except FileNotFoundError:
        raise IGPTError(f"no training log at {log_csv}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise IGPTError(f"{log_csv} is not a readable training log ({e})") from None
    missing = {"step", "train_loss", "val_loss"} - set(log.columns)
    if missing:
        raise IGPTError(f"{log_csv} lacks columns {sorted(missing)}")
    if log.empty:
        raise IGPTError(f"{log_csv} has no rows: the run logged no step")
    for col in ("step", "train_loss", "val_loss"):
        log[col] = pd.to_numeric(log[col], errors="coerce")
    return log


def loss_curve(log_csv: str | Path, title: str | None = None):
    """The training curve of ``train_log.csv``: per-step train loss (faint), its moving
    average, and the validation losses as points, in nats per token against the step."""
    import seaborn as sns
    from matplotlib.figure import Figure

    log = read_log(log_csv)
    # A window of ~5% of the run (at most 50 steps) smooths step noise but keeps the early
    # drop visible.
    window = max(1, min(50, len(log) // 20))
    smooth = log["train_loss"].rolling(window, min_periods=1).mean()
    val = log.dropna(subset=["val_loss"])
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(6, 4), dpi=120)
        ax = fig.add_subplot()
        ax.plot(log["step"], log["train_loss"], color="C0", alpha=0.25, lw=0.8)
        label = f"train (moving average of {window} steps)" if window > 1 else "train"
        ax.plot(log["step"], smooth, color="C0", lw=1.8, label=label)
        ax.plot(val["step"], val["val_loss"], "o-", color="C3", ms=5, label="validation")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats / token)")
        if title:
            ax.set_title(title)
        ax.legend(frameon=True)
        fig.tight_layout()
    return fig


def _upscale(img: np.ndarray) -> np.ndarray:
    """Nearest-neighbour upscaling ``[H, W, C]`` so that a 16×16 image stays readable."""
    s = max(1, math.ceil(_MIN_SIDE / img.shape[0]))
    return img.repeat(s, axis=0).repeat(s, axis=1)


def image_grid(
    rows: list[list[np.ndarray]],
    col_titles: list[str] | None = None,
    title: str | None = None,
):
    """A grid of uint8 images ``[H, W, C]`` (``rows[i][j]``), nearest-upscaled; one-channel
    images are drawn with a grey colour map."""
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = Figure(figsize=(1.3 * n_cols, 1.3 * n_rows + (0.4 if col_titles else 0)), dpi=100)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_axis_off()
            if j >= len(row):
                continue
            img = _upscale(row[j])
            if img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(img, interpolation="nearest")
            if i == 0 and col_titles:
                ax.set_title(col_titles[j], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def sample_grid(images: np.ndarray, sampling: Sampling | None = None):
    """Unconditional samples (uint8 ``[n, H, W, C]``,
    :func:`~igpt_eval.studies.samples.sample_images`) as a square-ish grid."""
    n, cols = len(images), math.ceil(math.sqrt(len(images)))
    rows = [list(images[i : i + cols]) for i in range(0, n, cols)]
    return image_grid(rows, title=_sampling_title(n, sampling or Sampling()))


def completion_grid(c: Completions):
    """Completions (:func:`~igpt_eval.studies.samples.complete_images`), one image a row:
    the original, the top half given with the bottom blanked grey, and each completion."""
    n, samples = len(c.originals), len(c.completed)
    rows = [[c.originals[i], c.given[i], *c.completed[:, i]] for i in range(n)]
    titles = ["original", "top half given"] + [f"sample {s + 1}" for s in range(samples)]
    return image_grid(rows, titles, title=_sampling_title(None, c.sampling))


def _sampling_title(n, s: Sampling) -> str:
    parts = [f"{n} samples" if n else None, f"temperature {s.temperature:g}"]
    parts += [f"top-k {s.top_k}" if s.top_k else None, f"seed {s.seed}"]
    return ", ".join(p for p in parts if p)
