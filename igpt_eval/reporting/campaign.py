"""The report of a pretraining campaign (:mod:`igpt_eval.studies.campaign`), drawn from the
folder it wrote: the depth curve with every control, the paired contrasts, the snapshots'
table and heatmap, fine-tuning, and the plan and stage times the run recorded.

``igpt-eval report --campaign OUT --out DIR`` writes ``DIR/README.md`` (its words:
``templates/campaign.md``) and the figures (``depth_curve``, ``track_*``, PNG and SVG).
Nothing here runs a model.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from igpt_eval.analysis.paired import paired_lines
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write, read_json
from igpt_eval.names import PIXEL_CONTROLS, Probe
from igpt_eval.reporting.figures import baselines_of, depth_curve, save_figure
from igpt_eval.reporting.tables import (
    comparison_table,
    concat_summaries,
    random_summaries,
    table_markdown,
)
from igpt_eval.reporting.templates import render
from igpt_eval.reporting.track import track_figures, track_markdown
from igpt_eval.results import load_results, summary
from igpt_eval.studies.track import track_summary


def read_campaign(folder: str | Path) -> tuple[dict, pd.DataFrame, pd.DataFrame | None]:
    """``(run record, final results, track results or None)`` of a campaign's folder; one
    clear error when it is not one."""
    folder = Path(folder)
    runs = [p for p in sorted(folder.glob("*/run.json")) if "campaign" in read_json(p)]
    if len(runs) != 1:
        raise IGPTError(f"{folder} holds no campaign's model folder (<name>/run.json)")
    run = read_json(runs[0])
    results = load_results(folder / "results.csv")
    track = load_results(folder / "track.csv") if (folder / "track.csv").is_file() else None
    return run, results, track


def campaign_report(folder: str | Path, out: str | Path, command: str = "") -> list[Path]:
    """Write the campaign report of ``folder`` into ``out``; returns the files."""
    run, results, track = read_campaign(folder)
    c, out = run["campaign"], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = results.model.iloc[0]
    mine = results[results.model == model]
    s = summary(mine[mine.probe == Probe.LBFGS], probe=Probe.LBFGS)
    files = save_figure(
        depth_curve(
            {model: s},
            baseline=baselines_of(results),
            random=random_summaries(results),
            concat=concat_summaries(results),
            title=f"{model}: linear probes of every layer ({c['settings']['dataset']})",
        ),
        out / "depth_curve",
    )
    plan, cfg = c.get("plan"), run.get("model_config", {})
    values = dict(
        name=c["settings"]["name"],
        command=c.get("command") or "igpt-eval campaign",
        device=c.get("device"),
        torch=c.get("torch"),
        status=c.get("status"),
        drawn_by=command,
        n_layer=cfg.get("n_layer"),
        n_embd=cfg.get("n_embd"),
        n_px=cfg.get("n_px"),
        colours=cfg.get("vocab_size"),
        plan=None,
        training=None,
        stages=", ".join(f"{k} {v:.0f} s" for k, v in c.get("stages", {}).items()),
        table=table_markdown(comparison_table(results)),
        paired=paired_lines(results[results.model == model]),
        finetune=None,
        test_images=None,
        track=None,
    )
    if plan:
        values["plan"] = dict(
            ms_per_step=f"{1e3 * plan['step_seconds']:.0f}",
            steps=f"{plan['steps']:,}",
            batch_size=plan["batch_size"],
            tokens=f"{plan['tokens'] / 1e6:,.1f}",
            flops=f"{plan['train_flops']:.2e}",
        )
    if "training" in c:
        t = c["training"]
        values["training"] = dict(seconds=f"{t['seconds']:.0f}", val_loss=f"{t['val_loss']:.4f}")
    ft = results[(results.probe == Probe.FINETUNE) & (results.split == "test")]
    ft = ft[ft.metric == "accuracy"]
    if len(ft):
        r = ft.iloc[0]
        values["finetune"] = dict(
            layer=int(r.layer),
            acc=f"{100 * r.value:.2f}%",
            ci=f"{100 * r.ci_low:.2f}, {100 * r.ci_high:.2f}",
        )
    controls = results[results.probe.isin(PIXEL_CONTROLS) & (results.split == "test")]
    n_eval = controls.n_eval.dropna()
    if len(n_eval):
        values["test_images"] = f"{int(n_eval.iloc[0]):,}"
    if track is not None and len(track):
        summ = track_summary(track)
        files += track_figures(track, summ, out)
        values["track"] = track_markdown(track, summ)
    text = render("campaign", **values)
    with atomic_write(out / "README.md", "w") as f:
        f.write(text.rstrip() + "\n")
    return [out / "README.md", *files]
