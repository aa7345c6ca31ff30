"""Probe accuracy over training: every layer of every snapshot of one or more runs.

The paper's Figure 3 relates a generative model's representation quality to its generative
validation loss: as the loss falls, the best layer's linear-probe accuracy rises, and larger
models probe better at equal loss. ``igpt-eval pretrain --snapshots N`` keeps the weights of
log-spaced steps (``snapshots/step-XXXXXX/``, each with the validation loss at that step);
:func:`track_runs` probes every layer of each of them with one protocol, sample and seed, and
returns one tidy results table with ``run``, ``step``, ``val_loss`` and ``tokens_seen``
columns beside the usual ones.

Every snapshot is probed on the *same* images (the stratified samples are a function of the
split seed and the sizes only), so accuracies at different steps and in different runs are
comparable, and activation caches are keyed by the weights: a second ``track`` over the same
snapshots re-extracts nothing. Extraction dominates the cost, hence the per-split sample
sizes (:class:`TrackSettings`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from igpt_eval.data.palette import Palette
from igpt_eval.data.source import DataSource
from igpt_eval.errors import IGPTError
from igpt_eval.model.checkpoint import CONFIG, list_snapshots
from igpt_eval.model.config import IGPTConfig
from igpt_eval.results import load_results, summary
from igpt_eval.studies.probe import probe_model
from igpt_eval.studies.settings import TrackSettings

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """One kept step of a training run."""

    run: str  # the run's display name
    step: int
    path: Path
    val_loss: float
    tokens_seen: int | None


def run_name(run: Path, others: list[Path]) -> str:
    """The folder's name, or ``parent/name`` where two runs share a name."""
    same = [o for o in others if o.name == run.name]
    return run.name if len(same) <= 1 else f"{run.parent.name}/{run.name}"


def find_snapshots(
    run: str | Path, name: str | None = None, steps=None, dataset: str | None = None
) -> list[Snapshot]:
    """The snapshots of ``run``, checked to be of one model and one palette.

    Raises one :class:`IGPTError` when the folder holds no snapshot, when its snapshots
    differ in architecture or palette (they would not be one training run), or when a
    requested step is not among them.
    """
    run = Path(run)
    if not run.is_dir():
        raise IGPTError(f"no run folder at {run}")
    found = list_snapshots(run)
    if not found:
        raise IGPTError(
            f"{run} holds no snapshots (snapshots/step-*/); train with "
            "igpt-eval pretrain ... --snapshots N to keep some"
        )
    configs, palettes = set(), set()
    for _, path, _ in found:
        cfg = IGPTConfig.load(path / CONFIG).to_dict()
        configs.add(tuple(sorted((k, v) for k, v in cfg.items() if k != "n_classes")))
        pal = path / "palette.npy"
        palettes.add(Palette.load(pal).hash if pal.is_file() else None)
    if len(configs) > 1:
        raise IGPTError(
            f"the snapshots in {run} are of different model configs; one run per folder"
        )
    if len(palettes) > 1 or None in palettes:
        raise IGPTError(
            f"the snapshots in {run} have different (or missing) palettes; one run per folder"
        )
    if dataset is None and not (found[0][1] / "run.json").is_file():
        raise IGPTError(
            f"the snapshots in {run} do not name their dataset (no run.json; written before "
            "snapshots carried it): give --dataset (the split seed is then 0)"
        )
    if steps is not None:
        have = {s for s, _, _ in found}
        missing = sorted(set(steps) - have)
        if missing:
            raise IGPTError(f"{run} has no snapshot of step(s) {missing}; it has {sorted(have)}")
        found = [f for f in found if f[0] in set(steps)]
    name = name or run.name
    return [
        Snapshot(name, step, path, float(info["val_loss"]), info.get("tokens_seen"))
        for step, path, info in found
    ]


def track_runs(
    runs: list[str | Path],
    settings: TrackSettings | None = None,
    *,
    dataset: str | DataSource | None = None,
    cache_dir: str | Path | None = None,
    on_snapshot=None,
    name: str | None = None,
) -> pd.DataFrame:
    """Probe every layer of every snapshot of ``runs``; one tidy results table.

    All snapshots are checked before any is probed, so a bad folder fails at once. Rows carry
    ``run``, ``step``, ``val_loss`` and ``tokens_seen``; ``model`` is ``run@step``.
    ``dataset`` (a name or a :class:`~igpt_eval.data.source.DataSource`; default: each run's
    own) is where the images and their tokens are read; ``cache_dir``
    holds each snapshot's activation caches in ``<run>/step-XXXXXX/`` (default: the managed
    cache, keyed by the weights); ``on_snapshot(table)`` sees each snapshot's rows as they
    come; ``name`` names a single run (default: its folder's name).
    """
    settings = settings or TrackSettings()
    data = DataSource.of(dataset)
    paths = [Path(r) for r in runs]
    if len(set(p.resolve() for p in paths)) < len(paths):
        raise IGPTError("the same run is given twice")
    if name is not None and len(paths) != 1:
        raise IGPTError("a run's name is for a single run")
    plan = [
        s
        for p in paths
        for s in find_snapshots(p, name or run_name(p, paths), settings.steps, data.name)
    ]
    probe = settings.probe
    frames = []
    for i, snap in enumerate(plan, 1):
        t0 = time.perf_counter()
        caches = None
        if cache_dir is not None:
            caches = Path(cache_dir) / snap.run.replace("/", "_") / f"step-{snap.step:06d}"
        df = probe_model(snap.path, data, probe, cache_dir=caches).results
        df["model"] = f"{snap.run}@{snap.step}"
        df["run"], df["step"] = snap.run, snap.step
        df["val_loss"], df["tokens_seen"] = snap.val_loss, snap.tokens_seen
        frames.append(df)
        if on_snapshot is not None:
            on_snapshot(df)
        best = summary(df)
        b = best[best.best].iloc[0]
        log.info(
            f"[{i}/{len(plan)}] {snap.run} step {snap.step:>6}: val loss "
            f"{snap.val_loss:.4f}, best layer (val) {b.layer}: test "
            f"{100 * b.test_acc:.2f}% ({time.perf_counter() - t0:.0f} s)"
        )
    return pd.concat(frames, ignore_index=True)


def track_summary(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, step): validation loss, the layer chosen on validation and its test
    accuracy with CI, the last layer's test accuracy, and the number of layers."""
    rows = []
    for (run, step), g in results.groupby(["run", "step"], sort=True):
        s = summary(g)  # the model's layers: summary leaves the controls out
        b, last = s[s.best].iloc[0], s[s["last"]].iloc[0]
        rows.append(
            dict(
                run=run,
                step=int(step),
                val_loss=float(g.val_loss.iloc[0]),
                tokens_seen=g.tokens_seen.iloc[0],
                best_layer=int(b.layer),
                n_layers=int(s.layer.max()),
                best_val_acc=float(b.val_acc),
                best_test_acc=float(b.test_acc),
                best_ci_low=float(b.ci_low),
                best_ci_high=float(b.ci_high),
                last_test_acc=float(last.test_acc),
            )
        )
    return pd.DataFrame(rows)


def loss_accuracy_correlation(summ: pd.DataFrame) -> pd.DataFrame:
    """Per run: Spearman's ρ between validation loss and the best layer's test accuracy
    over its snapshots (the paper's claim is ρ strongly negative: lower loss, better
    features), with the number of snapshots it rests on."""
    from scipy.stats import spearmanr

    rows = []
    for run, g in summ.groupby("run", sort=False):
        varied = len(g) >= 3 and g.val_loss.nunique() > 1 and g.best_test_acc.nunique() > 1
        rho = float(spearmanr(g.val_loss, g.best_test_acc)[0]) if varied else np.nan
        rows.append(dict(run=run, n_snapshots=len(g), spearman_rho=rho))
    return pd.DataFrame(rows)


def load_track(folder: str | Path) -> pd.DataFrame:
    """The results ``igpt-eval track`` wrote into ``folder``; one clear error otherwise."""
    path = Path(folder) / "results.parquet"
    df = load_results(path)
    if "step" not in df or "run" not in df:
        raise IGPTError(f"{path} holds no track results (no run/step columns)")
    return df
