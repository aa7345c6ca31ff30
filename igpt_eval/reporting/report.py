"""``igpt-eval report``: every figure and ``README.md`` of ``reports/`` from results files.

Reads a comparison folder written by ``igpt-eval compare`` (``results.parquet``,
``cka/cka.parquet``, ``models.json``) and the training logs of the models it names, and
writes figures (PNG + SVG) and a README whose every number is computed from those files::

    build_report("runs/compare", "reports")

The words are generated too, from the same numbers (:mod:`igpt_eval.reporting.words`).
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
from igpt_eval.names import Contrast, Probe, bare_name
from igpt_eval.predictions import load_predictions
from igpt_eval.reporting import figures as fig
from igpt_eval.reporting.finetune import finetune_section, load_finetunes, load_full_probes
from igpt_eval.reporting.lowdata import lowdata_figure, lowdata_table
from igpt_eval.reporting.model_figures import read_log
from igpt_eval.reporting.tables import (
    CONCAT,
    PIXELS,
    PIXELS_NATIVE,
    accuracy_rows,
    comparison_table,
    concat_summaries,
    load_cka,
    load_models,
    probe_summaries,
    random_summaries,
    table_markdown,
)
from igpt_eval.reporting.track import track_figures, track_markdown
from igpt_eval.reporting.words import (
    compare_words,
    describe_cka,
    describe_depth_curve,
    describe_knn,
)
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


def _training_lines(logs: dict[str, Path]) -> list[str]:
    out = []
    for name, f in logs.items():
        log = read_log(f)
        val = log.dropna(subset=["val_loss"])
        v = f", final validation loss {val.val_loss.iloc[-1]:.4f}" if len(val) else ""
        out.append(
            f"- **{name}**: {int(log.step.max())} optimizer steps, train loss "
            f"{log.train_loss.iloc[:10].mean():.4f} → {log.train_loss.iloc[-50:].mean():.4f} "
            f"(mean of the first 10 / last 50 steps){v} (nats per token)."
        )
    return out


def file_stems(labels: list[str]) -> dict[str, str]:
    """The part of each figure's file name that names its model: the bare name
    (``depth_curve-fmnist-ar.png``) where no two models of the report share it, else the
    label with its weights hash."""
    bare = [bare_name(x) for x in labels]
    return {x: b if bare.count(b) == 1 else x for x, b in zip(labels, bare, strict=True)}


def _figure_line(title: str, stem: str) -> str:
    return f"### {title}\n\n![{title}]({stem}.png)\n\n([SVG]({stem}.svg))\n"


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
    ft_md = None
    if finetune_dirs:
        ft_md = finetune_section(
            *load_finetunes(finetune_dirs),
            df,
            load_predictions(results_dir),
            load_full_probes(full_probe_dirs or ()),
        )
    summaries = probe_summaries(df)
    names = list(summaries)
    stems = file_stems(names)
    colours = fig.model_colours(names)
    baseline = fig.baseline_of(df)
    controls = dict(
        baseline=fig.baselines_of(df), random=random_summaries(df), concat=concat_summaries(df)
    )
    dataset = df.dataset.dropna().iloc[0]
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    figs: list[str] = []  # README sections, in order
    notes: list[str] = []

    drawn = fig.depth_curve(
        summaries,
        relative=True,
        colours=colours,
        title=f"linear probes of every layer, {dataset}",
        **controls,
    )
    files += fig.save_figure(drawn, out / "depth_curves")
    figs.append(_figure_line("Depth curves, all models (relative depth)", "depth_curves"))
    for n, s in summaries.items():
        drawn = fig.depth_curve(
            {n: s}, colours=colours, title=f"linear probes of {n}, {dataset}", **controls
        )
        files += fig.save_figure(drawn, out / f"depth_curve-{stems[n]}")
        figs.append(_figure_line(f"Depth curve of {n}", f"depth_curve-{stems[n]}"))
    if len(accuracy_rows(df, "knn")):
        files += fig.save_figure(fig.knn_curve(df, colours=colours), out / "knn")
        figs.append(_figure_line("kNN accuracy per layer", "knn"))
    if cka is not None:
        vmin = fig.cka_vmin(cka)  # one colour scale for every heatmap
        for (a, b), _ in cka.groupby(["model_a", "model_b"], sort=False):
            stem = f"cka-{stems[a]}" if a == b else f"cka-{stems[a]}-vs-{stems[b]}"
            files += fig.save_figure(fig.cka_heatmap(cka, a, b, vmin=vmin), out / stem)
            figs.append(_figure_line(f"CKA, {a if a == b else f'{a} vs {b}'}", stem))
    else:
        notes.append(f"No CKA table in {results_dir}/cka: CKA heatmaps not drawn.")

    dirs = _model_dirs(results_dir, names)
    logs = {
        n: d / "train_log.csv" for n, d in dirs.items() if d and (d / "train_log.csv").is_file()
    }
    notes += [
        f"No training log for {n}: its training curve is not drawn." for n in names if n not in logs
    ]
    if logs:
        drawn = fig.training_curves(logs, colours=colours)
        files += fig.save_figure(drawn, out / "training_curves")
        figs.append(_figure_line("Training curves", "training_curves"))
    pal_dir = next((d for d in dirs.values() if d and (d / "palette.npy").is_file()), None)
    if pal_dir is not None:
        drawn = fig.palette_swatch(Palette.load(pal_dir / "palette.npy"))
        files += fig.save_figure(drawn, out / "palette")
        figs.append(_figure_line("Palette", "palette"))
    for n, d in dirs.items():
        src = d / "completions.png" if d else None
        if src is not None and src.is_file():
            dst = out / f"{stems[n]}-completions.png"
            if not dst.exists() or not dst.samefile(src):
                shutil.copyfile(src, dst)
            files.append(dst)
            figs.append(
                f"### Completions by {n}\n\n![completions]({dst.name})\n\n(from the "
                f"model card: `igpt-eval model-card --model {_shown(d)}`)\n"
            )

    low = None
    if lowdata_dir is not None and any(Path(lowdata_dir).glob("results.*")):
        low_df = load_results(Path(lowdata_dir) / "results.parquet")
        files += fig.save_figure(lowdata_figure(low_df), out / "lowdata")
        figs.append(_figure_line("Low-data: linear probe vs fine-tuning vs pixels", "lowdata"))
        low = (lowdata_table(low_df), lowdata_dir)
    elif lowdata_dir is not None:
        notes.append(f"No low-data results in {lowdata_dir} (`igpt-eval lowdata`): not drawn.")

    track_md = None
    if track_df is not None:
        summ = track_summary(track_df)
        files += track_figures(track_df, summ, out)
        track_md = track_markdown(track_df, summ, source=_shown(Path(track_dir)))

    table = comparison_table(df)
    md = _readme(df, table, summaries, baseline, cka, logs, figs, notes, results_dir, command)
    if low is not None:  # its own section, before the figures
        head, sep, tail = md.partition("## Figures")
        md = (
            head
            + (f"## Low data (`igpt-eval lowdata`, results in `{low[1]}`)\n\n{low[0]}\n\n")
            + sep
            + tail
        )
    if track_md is not None:  # its own section, before the figures
        head, sep, tail = md.partition("## Figures")
        md = head + track_md + "\n" + sep + tail
    if ft_md is not None:
        head, sep, tail = md.partition("## Figures")
        md = head + "## Fine-tuning (`igpt-eval finetune`)\n\n" + ft_md + "\n" + sep + tail
    with atomic_write(out / "README.md", "w") as f:
        f.write(md)
    return files + [out / "README.md"]


def _model_pairs(table: pd.DataFrame, diffs: pd.DataFrame) -> list[str]:
    """Sentences comparing the models' linear probes at their layers chosen on validation:
    paired (``best_vs_best`` rows) when the results have them, else the gap, untested."""
    pairs = diffs[(diffs.contrast == Contrast.BEST_VS_BEST) & (diffs.probe == Probe.LBFGS)]
    if len(pairs):
        out = []
        for _, r in pairs.iterrows():
            a = f"**{r.model}** (layer {int(r.layer)})"
            b = f"**{r.vs_model}** (layer {int(r.vs_layer)})"
            out += [f"At the layers chosen on validation, {compare_words(r, a, b)}.", ""]
        return out
    models = [r for r in table.itertuples() if r.model not in (PIXELS, PIXELS_NATIVE)]
    if len(models) < 2:
        return []
    a, b = sorted(models, key=lambda r: -r.best_acc)[:2]
    return [
        f"At the layers chosen on validation, **{a.model}** is "
        f"{100 * (a.best_acc - b.best_acc):.2f} points above **{b.model}** on test; untested "
        "(no per-example predictions), and overlapping or separate marginal CIs do not "
        "decide it.",
        "",
    ]


def _control_setup(df: pd.DataFrame) -> list[str]:
    """Setup lines for the controls the results hold beyond the pixel baseline: native
    pixels, random-weights twins, the multi-layer probe."""
    out = []
    native = accuracy_rows(df, PIXELS_NATIVE)
    if len(native):
        n = native.n_features.iloc[0] if "n_features" in native else np.nan
        size = "" if pd.isna(n) else f" ({int(n)} numbers an image)"
        out.append(
            "- Baseline: the same linear probe on the dataset's own pixels at native "
            f"resolution{size}, neither resized nor quantised, in [-1, 1]."
        )
    if random_summaries(df):
        out.append(
            "- Control: each model's random-weights twin, the same architecture at the "
            "initialisation its training run started from, probed alike (same protocol, "
            "splits and samples; its own layer chosen on validation)."
        )
    cat = df[(df.probe == CONCAT) & (df.split == "test")]
    if len(cat):
        out.append(
            f"- Multi-layer probe: the {int(cat.concat_layers.iloc[0])} layers centred on "
            "the layer chosen on validation (shifted inwards at the ends), concatenated and "
            "probed with the same protocol."
        )
    return out


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


def _readme(df, table, summaries, baseline, cka, logs, figs, notes, results_dir, command):
    dataset = df.dataset.dropna().iloc[0]
    diffs = differences(df)
    knn = accuracy_rows(df, "knn")
    lb = df[(df.probe == "lbfgs") & (df.split == "test")]
    n_test = int(lb.n_eval.iloc[0]) if "n_eval" in lb and len(lb) else None
    lines = [
        f"# Where do the best features live? {_subject(df, summaries)}, layer by layer",
        "",
        f"Generated by `{command or 'igpt-eval report'}` from the results in `{results_dir}` "
        f"(written by `{_writer(results_dir)}`). Every number below is computed from those "
        "files; rerun both commands to regenerate this page.",
        "",
        "## Setup",
        "",
        f"- Dataset: `{dataset}`" + (f", {n_test} test images." if n_test else "."),
        "- Models: "
        + ", ".join(
            f"`{n}` ({df.loc[df.model == n, 'objective'].iloc[0]}, {int(s.layer.max())} layers)"
            for n, s in summaries.items()
        )
        + ".",
        "- Linear probes: multinomial logistic regression (L-BFGS) on each layer's "
        "mean-pooled features; C chosen on a validation split carved from train, refit on "
        "train + val, test reported once with a bootstrap 95% CI.",
    ]
    if len(knn):
        lines.append(
            f"- kNN: cosine similarity, k = {knn.k.iloc[0]:g}, temperature "
            f"{knn.temperature.iloc[0]:g} (DINO's weighted vote); bank = train + val, queries "
            "= test; the layer is chosen by validation queries against a train-only bank."
        )
    if baseline is not None:
        lines.append(
            "- Baseline: the same linear probe on the raw palette-quantised pixels (what the "
            "models see), flattened, in [-1, 1]."
        )
    lines += _control_setup(df)
    if cka is not None:
        lines.append(f"- CKA: linear, on {int(cka.n.iloc[0])} test images.")
    if len(diffs):
        lines.append(
            "- Differences are paired, on the same test images: a bootstrap 95% CI of the "
            "accuracy difference (the same resampled images for both sides) and McNemar's "
            "exact test, from the per-example test predictions in `predictions.npz`. A "
            "difference whose CI includes 0 is not called one."
        )
    lines += ["", "## Linear probes", "", table_markdown(table), ""]
    lines += [
        "Best layer = the layer with the highest *validation* accuracy (the random-weights "
        "twin's too); the − columns (best − last, best − pixels, …) are test-accuracy "
        "differences in percentage points, "
        + (
            "with paired 95% CIs and McNemar p-values."
            if len(diffs)
            else "untested: these results hold no per-example test predictions (written "
            "by an earlier version); rerun `igpt-eval compare` for paired CIs."
        ),
        "",
    ]
    for n, s in summaries.items():
        mine = diffs[(diffs.model == n) & diffs.probe.isin(["lbfgs", CONCAT])]
        lines += [describe_depth_curve(n, s, baseline, mine), ""]
    lines += _model_pairs(table, diffs)
    if len(knn):
        lines += ["## kNN", "", *describe_knn(df), ""]
    if cka is not None:
        lines += ["## CKA", "", *describe_cka(cka), ""]
    if logs:
        lines += ["## Training", "", *_training_lines(logs), ""]
        if {"ar", "bert"} <= set(df.objective):
            lines += [
                "AR and BERT losses are not comparable: BERT's is measured on the masked "
                "15% of positions only.",
                "",
            ]
    if notes:
        lines += ["## Not drawn", "", *[f"- {x}" for x in notes], ""]
    lines += ["## Figures", "", *figs]
    return "\n".join(lines)
