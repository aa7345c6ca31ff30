"""``igpt-eval report``: every figure and ``README.md`` of ``reports/`` from results files.

Reads a comparison folder written by ``igpt-eval compare`` (``results.parquet``,
``cka/cka.parquet``, ``models.json``) and the training logs of the models it names, and
writes figures (PNG + SVG) and a README whose every number is computed from those files::

    build_report("runs/compare", "reports")

The words are ``templates/report.md`` (and the phrases of ``templates/_words.md``), filled
with the same numbers (:mod:`igpt_eval.reporting.words`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from igpt_eval.analysis.paired import differences
from igpt_eval.data.palette import Palette
from igpt_eval.defaults import MODELS_DIR
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.names import CONCAT, PIXELS, PIXELS_NATIVE, Contrast, Probe, bare_name
from igpt_eval.predictions import load_predictions
from igpt_eval.reporting import figures as fig
from igpt_eval.reporting.finetune import finetune_section, load_finetunes, load_full_probes
from igpt_eval.reporting.lowdata import lowdata_figure, lowdata_table
from igpt_eval.reporting.model_figures import read_log
from igpt_eval.reporting.tables import (
    accuracy_rows,
    comparison_table,
    concat_summaries,
    load_cka,
    load_models,
    probe_summaries,
    random_summaries,
    table_markdown,
)
from igpt_eval.reporting.templates import render
from igpt_eval.reporting.track import track_figures, track_markdown
from igpt_eval.reporting.words import cka_views, depth_curve_view, difference, knn_views
from igpt_eval.results import load_results
from igpt_eval.studies.track import load_track, track_summary


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (as a user typed it)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _model_dirs(results_dir: Path, names: list[str]) -> dict[str, Path | None]:
    """Where each model's folder is: ``models.json``, else the shipped models' folder."""
    known = load_models(results_dir)
    out = {}
    for n in names:
        cands = [Path(known[n]["path"])] if n in known else []
        cands.append(MODELS_DIR / bare_name(n))
        out[n] = next((p for p in cands if p.is_dir()), None)
    return out


def load_comparison(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(results, cka)`` of a comparison folder; one clear error when it holds none."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise IGPTError(
            f"no results folder at {results_dir}; run `igpt-eval compare --out {results_dir}` first"
        )
    if not any(results_dir.glob("*.parquet")) and not any(results_dir.glob("*.csv")):
        raise IGPTError(
            f"{results_dir} holds no results files (.parquet or .csv); run "
            f"`igpt-eval compare --out {results_dir}` first"
        )
    df = load_results(results_dir)
    if df.empty:
        raise IGPTError(f"the results in {results_dir} have no rows")
    return df, load_cka(results_dir)


def _training(logs: dict[str, Path]) -> list[dict]:
    """Per model with a training log: its steps and its train loss early and late."""
    out = []
    for name, f in logs.items():
        log = read_log(f)
        val = log.dropna(subset=["val_loss"])
        out.append(
            dict(
                name=name,
                steps=int(log.step.max()),
                first=f"{log.train_loss.iloc[:10].mean():.4f}",
                last=f"{log.train_loss.iloc[-50:].mean():.4f}",
                val=f"{val.val_loss.iloc[-1]:.4f}" if len(val) else None,
            )
        )
    return out


def file_stems(labels: list[str]) -> dict[str, str]:
    """The part of each figure's file name that names its model: the bare name
    (``depth_curve-fmnist-ar.png``) where no two models of the report share it, else the
    label with its weights hash."""
    bare = [bare_name(x) for x in labels]
    return {x: b if bare.count(b) == 1 else x for x, b in zip(labels, bare, strict=True)}


def build_report(
    results_dir: str | Path = "runs/compare",
    out: str | Path = "reports",
    command: str = "",
    lowdata_dir: str | Path | None = "runs/lowdata",
    track_dir: str | Path | None = None,
    finetune_dirs=None,
    full_probe_dirs=(),
) -> list[Path]:
    """Draw every figure and write ``README.md`` into ``out`` from the comparison folder
    ``results_dir`` (and, when they hold results, the ``igpt-eval lowdata`` folder
    ``lowdata_dir`` and the ``igpt-eval track`` folder ``track_dir``, and the ``igpt-eval
    finetune`` folders ``finetune_dirs``, beside the full-train ``igpt-eval probe`` folders
    ``full_probe_dirs``: :mod:`igpt_eval.reporting.finetune`); returns the files written."""
    results_dir, out = Path(results_dir), Path(out)
    if full_probe_dirs and not finetune_dirs:
        raise IGPTError("full-train probes are compared with fine-tuned models: give --finetune")
    df, cka = load_comparison(results_dir)
    track_df = None
    if track_dir is not None:  # read (and checked) before anything is written
        track_df = load_track(track_dir)
    finetune = None
    if finetune_dirs:
        finetune = finetune_section(
            *load_finetunes(finetune_dirs),
            df,
            load_predictions(results_dir),
            load_full_probes(full_probe_dirs or ()),
        )
    summaries = probe_summaries(df)
    names = list(summaries)
    stems = file_stems(names)
    colours = fig.model_colours(names)
    controls = dict(
        baseline=fig.baselines_of(df), random=random_summaries(df), concat=concat_summaries(df)
    )
    dataset = df.dataset.dropna().iloc[0]
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    figs: list[dict] = []  # the README's figures, in order (templates/report.md names them)

    def draw(drawn, stem: str, kind: str, **names) -> None:
        files.extend(fig.save_figure(drawn, out / stem))
        figs.append(dict(kind=kind, stem=stem, **names))

    title = f"linear probes of every layer, {dataset}"
    draw(fig.depth_curve(summaries, relative=True, colours=colours, title=title, **controls),
         "depth_curves", "depth curves")  # fmt: skip
    for n, s in summaries.items():
        title = f"linear probes of {n}, {dataset}"
        drawn = fig.depth_curve({n: s}, colours=colours, title=title, **controls)
        draw(drawn, f"depth_curve-{stems[n]}", "depth curve", model=n)
    if len(accuracy_rows(df, "knn")):
        draw(fig.knn_curve(df, colours=colours), "knn", "knn")
    if cka is not None:
        vmin = fig.cka_vmin(cka)  # one colour scale for every heatmap
        for (a, b), _ in cka.groupby(["model_a", "model_b"], sort=False):
            stem = f"cka-{stems[a]}" if a == b else f"cka-{stems[a]}-vs-{stems[b]}"
            draw(fig.cka_heatmap(cka, a, b, vmin=vmin), stem, "cka", a=a, b=b)

    dirs = _model_dirs(results_dir, names)
    logs = {
        n: d / "train_log.csv" for n, d in dirs.items() if d and (d / "train_log.csv").is_file()
    }
    if logs:
        draw(fig.training_curves(logs, colours=colours), "training_curves", "training curves")
    pal_dir = next((d for d in dirs.values() if d and (d / "palette.npy").is_file()), None)
    if pal_dir is not None:
        draw(fig.palette_swatch(Palette.load(pal_dir / "palette.npy")), "palette", "palette")
    for n, d in dirs.items():
        src = d / "completions.png" if d else None
        if src is not None and src.is_file():
            dst = out / f"{stems[n]}-completions.png"
            if not dst.exists() or not dst.samefile(src):
                shutil.copyfile(src, dst)
            files.append(dst)
            figs.append(dict(kind="completions", model=n, file=dst.name, folder=_shown(d)))

    lowdata = None
    if lowdata_dir is not None and any(Path(lowdata_dir).glob("results.*")):
        low_df = load_results(Path(lowdata_dir) / "results.parquet")
        draw(lowdata_figure(low_df), "lowdata", "lowdata")
        lowdata = dict(table=lowdata_table(low_df), source=lowdata_dir)

    track = None
    if track_df is not None:
        summ = track_summary(track_df)
        files += track_figures(track_df, summ, out)
        track = track_markdown(track_df, summ, source=_shown(Path(track_dir)))

    md = render(
        "report",
        **_readme_values(df, summaries, cka, logs, results_dir, command),
        not_drawn=dict(
            cka=cka is None,
            logs=[n for n in names if n not in logs],
            lowdata=lowdata_dir if lowdata is None and lowdata_dir is not None else None,
        ),
        lowdata=lowdata,
        track=track,
        finetune=finetune,
        figures=figs,
    )
    with atomic_write(out / "README.md", "w") as f:
        f.write(md)
    return files + [out / "README.md"]


def _model_pairs(table: pd.DataFrame, diffs: pd.DataFrame) -> dict:
    """The models' linear probes compared at their layers chosen on validation: paired
    (``best_vs_best`` rows, ``paired``) when the results have them, else the two best
    models' gap, untested (``untested``; None with fewer than two models)."""
    pairs = diffs[(diffs.contrast == Contrast.BEST_VS_BEST) & (diffs.probe == Probe.LBFGS)]
    paired = [
        dict(
            a=r.model, a_layer=int(r.layer), b=r.vs_model, b_layer=int(r.vs_layer), d=difference(r)
        )  # fmt: skip
        for _, r in pairs.iterrows()
    ]
    models = [r for r in table.itertuples() if r.model not in (PIXELS, PIXELS_NATIVE)]
    untested = None
    if not paired and len(models) >= 2:
        a, b = sorted(models, key=lambda r: -r.best_acc)[:2]
        untested = dict(a=a.model, b=b.model, points=f"{100 * (a.best_acc - b.best_acc):.2f}")
    return dict(paired=paired, untested=untested)


def _controls(df: pd.DataFrame) -> dict:
    """The controls the results hold beyond the pixel baseline: native pixels (and their
    size), random-weights twins, the multi-layer probe (and its span)."""
    native = accuracy_rows(df, PIXELS_NATIVE)
    n = native.n_features.iloc[0] if len(native) and "n_features" in native else np.nan
    cat = df[(df.probe == CONCAT) & (df.split == "test")]
    return dict(
        native=dict(size=None if pd.isna(n) else int(n)) if len(native) else None,
        random=bool(random_summaries(df)),
        concat_layers=int(cat.concat_layers.iloc[0]) if len(cat) else None,
    )


def _subject(df: pd.DataFrame, summaries: dict) -> str:
    """The title's subject, read from the results: "AR vs BERT" only when both are there."""
    objectives = {df[df.model == n].objective.iloc[0] for n in summaries}
    if objectives == {"ar", "bert"}:
        return "AR vs BERT"
    return " vs ".join(summaries) if len(summaries) <= 3 else f"{len(summaries)} models"


def _writer(results_dir: Path) -> str:
    """Which command wrote a results folder: compare leaves its tables and CKA beside the
    results; probe does not."""
    return "igpt-eval compare" if (results_dir / "tables").is_dir() else "igpt-eval probe"


def _readme_values(df, summaries, cka, logs, results_dir, command) -> dict:
    """What ``templates/report.md`` states of the comparison, besides its extra sections."""
    diffs = differences(df)
    knn = accuracy_rows(df, "knn")
    lb = df[(df.probe == "lbfgs") & (df.split == "test")]
    baseline = fig.baseline_of(df)
    table = comparison_table(df)
    curves = []
    for n, s in summaries.items():
        mine = diffs[(diffs.model == n) & diffs.probe.isin(["lbfgs", CONCAT])]
        curves.append(depth_curve_view(n, s, baseline, mine))
    return dict(
        subject=_subject(df, summaries),
        command=command or "igpt-eval report",
        results_dir=results_dir,
        writer=_writer(results_dir),
        dataset=df.dataset.dropna().iloc[0],
        n_test=int(lb.n_eval.iloc[0]) if "n_eval" in lb and len(lb) else None,
        models=[
            dict(
                name=n,
                objective=df.loc[df.model == n, "objective"].iloc[0],
                layers=int(s.layer.max()),
            )  # fmt: skip
            for n, s in summaries.items()
        ],
        knn=dict(k=f"{knn.k.iloc[0]:g}", temperature=f"{knn.temperature.iloc[0]:g}")
        if len(knn)
        else None,
        baseline=baseline is not None,
        controls=_controls(df),
        cka_images=int(cka.n.iloc[0]) if cka is not None else None,
        paired=bool(len(diffs)),
        table=table_markdown(table),
        curves=curves,
        pairs=_model_pairs(table, diffs),
        knn_lines=knn_views(df) if len(knn) else [],
        cka=cka_views(cka) if cka is not None else [],
        training=_training(logs),
        ar_and_bert={"ar", "bert"} <= set(df.objective),
    )
