"""A comparison's folder: what :func:`igpt_eval.studies.compare.compare_models` measured,
written for ``igpt-eval report`` and for people.

``results.parquet``/``.csv`` (the tidy table), ``predictions.npz`` (the per-example test
predictions, see :mod:`igpt_eval.results`), ``cka/cka.parquet``/``.csv``,
``tables/comparison.md``/``.csv`` (:func:`~igpt_eval.reporting.tables.comparison_table`),
``depth_curve.png``/``.svg`` and ``models.json`` (where each model lives, for the report's
training curves and palette).
"""

from __future__ import annotations

from pathlib import Path

from igpt_eval.io import atomic_write, write_json
from igpt_eval.reporting.figures import baselines_of, depth_curve, model_colours, save_figure
from igpt_eval.reporting.tables import (
    comparison_table,
    concat_summaries,
    probe_summaries,
    random_summaries,
    table_markdown,
)
from igpt_eval.results import MODELS_FILE, save_results
from igpt_eval.studies.compare import Comparison


def write_comparison(c: Comparison, out: str | Path) -> list[Path]:
    """Write every file of comparison ``c`` into ``out`` (see the module docstring); returns
    the main ones, the figure's last."""
    out = Path(out)
    files = [
        save_results(c.results, out, predictions=c.predictions),
        save_results(c.cka, out / "cka", stem="cka"),
    ]
    table = comparison_table(c.results)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "tables/comparison.csv", "w") as f:
        table.to_csv(f, index=False)
    with atomic_write(out / "tables/comparison.md", "w") as f:
        f.write(table_markdown(table) + "\n")
    write_json(out / MODELS_FILE, {m.name: m.to_json() for m in c.models})
    files += [out / "tables/comparison.md", out / MODELS_FILE]
    models = c.results[c.results.model.isin([m.name for m in c.models])]
    dataset, site = models.dataset.iloc[0], models.site_kind.iloc[0]
    summaries = probe_summaries(c.results)
    drawn = depth_curve(
        summaries,
        relative=True,
        baseline=baselines_of(c.results),
        colours=model_colours(list(summaries)),
        random=random_summaries(c.results),
        concat=concat_summaries(c.results),
        title=f"linear probes of every layer on {dataset} ({site})",
    )
    return files + save_figure(drawn, out / "depth_curve")
