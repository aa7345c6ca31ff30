"""From a model to its depth curve in one call: :func:`probe_depth_curve`.

``igpt-eval probe`` and notebooks draw the same figure (:func:`probe_figure`) from the same
results table, so what a notebook shows is what the command line saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from igpt_eval.defaults import DEFAULT_MODEL
from igpt_eval.names import PIXEL_CONTROLS
from igpt_eval.predictions import Predictions
from igpt_eval.reporting.figures import baselines_of, depth_curve, save_figure
from igpt_eval.reporting.tables import concat_summaries
from igpt_eval.results import summary
from igpt_eval.studies.probe import ProbeRun, probe_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def probe_figure(results: pd.DataFrame, title: str | None = None) -> Figure:
    """The depth curve of one model's probe results (:func:`igpt_eval.probe_model`'s
    table): test accuracy per layer with its CI band, the layer chosen on validation
    starred, the pixel controls as lines, the multi-layer probe when there is one."""
    own = results[~results.probe.isin(PIXEL_CONTROLS) & (results.metric == "accuracy")]
    model, method = own.model.iloc[0], own.probe.iloc[0]
    cat = concat_summaries(results).get(model)
    name = f"{model} ({own.objective.iloc[0]}) on {own.dataset.iloc[0]}"
    return depth_curve(
        {model: summary(results)},
        title=title if title is not None else f"{method} linear probes: {name}",
        baseline=baselines_of(results),
        concat=None if cat is None else {model: cat},
    )


@dataclass
class DepthCurve:
    """What :func:`probe_depth_curve` returns: the probe run (``results``, ``predictions``,
    ``summary``, ``differences``: :class:`~igpt_eval.studies.probe.ProbeRun`) and its
    ``figure`` (a matplotlib ``Figure``; a notebook shows it as the cell's value)."""

    run: ProbeRun
    figure: Figure

    @property
    def results(self) -> pd.DataFrame:
        return self.run.results

    @property
    def predictions(self) -> Predictions:
        return self.run.predictions

    @property
    def summary(self) -> pd.DataFrame:
        """One row per layer (:attr:`ProbeRun.summary`)."""
        return self.run.summary

    @property
    def differences(self) -> pd.DataFrame:
        """The paired contrasts (:attr:`ProbeRun.differences`)."""
        return self.run.differences

    def save(self, path: str | Path) -> list[Path]:
        """Write the figure as ``path``.png and .svg."""
        return save_figure(self.figure, path)

    def _repr_png_(self):  # a notebook cell ending in a DepthCurve shows its figure
        from io import BytesIO

        buf = BytesIO()
        self.figure.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def probe_depth_curve(
    model: str | Path = DEFAULT_MODEL,
    dataset=None,
    settings=None,
    *,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
) -> DepthCurve:
    """Probe every layer of ``model`` as ``igpt-eval probe`` does (same caches, samples,
    controls and paired statistics: :func:`igpt_eval.probe_model`, which takes the same
    arguments) and draw its depth curve."""
    run = probe_model(model, dataset, settings, cache_dir=cache_dir, out=out)
    return DepthCurve(run, probe_figure(run.results))
