"""Probe a model end to end: caches for train/val/test, a probe per layer, results files.

This is what ``igpt-eval probe`` runs; notebooks can call :func:`probe_model` directly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from igpt_eval.defaults import EXTRACT_BATCH, SAMPLE_TEST, SAMPLE_TRAIN, SAMPLE_VAL
from igpt_eval.errors import IGPTError
from igpt_eval.probes.protocol import Features, probe_lbfgs
from igpt_eval.results import (
    CONCAT,
    PIXEL_CONTROLS,
    Predictions,
    random_twin,
    save_results,
    to_frame,
)

SPLITS = ("train", "val", "test")
#: The shipped models live beside the package (a source checkout or editable install).
MODELS_DIR = Path(
    os.environ.get("IGPT_EVAL_MODELS", Path(__file__).resolve().parents[2] / "models")
)
DEFAULT_MODEL = MODELS_DIR / "fmnist-ar"


def select_layers(cache, layers: list[int] | None) -> tuple[list[int], list[str]]:
    """The requested ``layers`` (default: all) of a cache, checked, and their site names."""
    layers = list(cache.layers) if layers is None else layers
    missing = [x for x in layers if x not in cache.layers]
    if missing:
        raise IGPTError(f"layer {missing[0]} is not in the cache (it has {cache.layers})")
    return layers, [cache.sites[cache.layers.index(x)] for x in layers]


def load_features(caches: dict, layers: list[int] | None) -> tuple[dict, list[int], list[str]]:
    """Stack each split's cached layers into :class:`Features` (G, N, d) float32."""
    layers, sites = select_layers(caches["train"], layers)
    feats = {
        name: Features(
            np.stack([np.asarray(c[x], dtype=np.float32) for x in layers]), np.asarray(c.labels)
        )
        for name, c in caches.items()
    }
    return feats, layers, sites


def probe_model(
    model: str | Path = DEFAULT_MODEL,
    dataset: str | None = None,
    *,
    layers: list[int] | None = None,
    site: str = "ln_1",
    method: str = "lbfgs",
    backend: str = "torch",
    device: str = "cpu",
    data_dir=None,
    token_cache=None,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
    standardize: bool = True,
    bert_masks: int = 1,
    batch_size: int = EXTRACT_BATCH,
    compute: str = "float32",
    train_size: int | None = SAMPLE_TRAIN,
    val_size: int | None = SAMPLE_VAL,
    test_size: int | None = SAMPLE_TEST,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    pixels: bool = True,
    native_pixels: bool = False,
    random_weights: bool = False,
    concat_layers: int | None = None,
    return_predictions: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, Predictions]:
    """Extract (or reuse) the model's features on train/val/test, probe every requested
    layer with ``method`` (``lbfgs`` or ``sgd``), save ``results.parquet``/``.csv`` and the
    per-example test predictions ``predictions.npz`` into ``out`` (when given) and return
    the results table (with ``return_predictions``: ``(table, predictions)``).

    With ``pixels`` (the default), the raw-pixel baseline is probed too (L-BFGS on the
    palette-quantised images, from the same token caches, splits and training sample:
    :func:`igpt_eval.probes.pixels.probe_pixels`; its rows have ``model = probe =
    "pixels"``). The table then ends with paired-difference rows (``metric =
    "accuracy_diff"``, :mod:`igpt_eval.paired`): the layer chosen on validation − the last
    layer, and − the pixels, each with a paired bootstrap 95% CI and McNemar's p-value.
    ``native_pixels`` adds the dataset's raw pixels at their native resolution as a second
    control (:func:`igpt_eval.probes.pixels.probe_native_pixels`; ``model = probe =
    "pixels_native"``, contrast ``best_vs_pixels_native``).

    ``random_weights`` probes the model's random-weights control instead of the model: the
    same architecture at the initialisation its training run started from
    (:meth:`igpt_eval.model.IGPT.initialised` with the run's seed), extracted into caches
    of its own; its rows are named ``"<model> (random weights)"``
    (:func:`igpt_eval.results.random_twin`). ``concat_layers`` = K (odd) adds the
    multi-layer probe (:mod:`igpt_eval.probes.concat`, L-BFGS only): the K layers centred
    on the one chosen on validation, concatenated (``probe = "lbfgs_concat"``, contrast
    ``concat_vs_best``).

    ``train_size``, ``val_size`` and ``test_size`` cap each split at a stratified sample of
    that many images (``None``: all of it; the defaults, 5,000/2,000/5,000, are
    :mod:`igpt_eval.defaults`' ``SAMPLE_*``: the main job's budget).
    Extraction runs under
    ``compute``: ``float32`` by default (exact, and the same on every machine);
    ``bfloat16`` autocast gives pooled features within ~0.15% of float32's, twice as fast on
    CPUs with bf16 units (AMX, AVX512-BF16) and 2.5x slower on AVX2-only ones. Features
    are standardised (L-BFGS) or whitened (SGD) with training statistics unless
    ``standardize=False``. A cache in
    ``cache_dir`` built from other inputs is refused unless ``overwrite``."""
    from igpt_eval.extraction import extract_split, open_model, run_defaults
    from igpt_eval.paired import paired_rows
    from igpt_eval.probes.concat import check_concat

    if method not in ("lbfgs", "sgd"):
        raise IGPTError(f"unknown probe method {method!r}; use lbfgs or sgd")
    path = Path(model)
    if not path.exists():
        raise IGPTError(
            f"no model at {path}"
            + (
                " (the shipped models live in models/ of a source checkout; set IGPT_EVAL_MODELS)"
                if path == DEFAULT_MODEL
                else ""
            )
        )
    net, palette, ident = open_model(path, device=device, random_weights=random_weights)
    # Before any extraction: a bad K fails at once, not minutes later.
    check_concat(
        concat_layers, net.config.n_layer + 1 if layers is None else len(set(layers)), method
    )
    caches = {}
    t0 = time.perf_counter()
    for split in SPLITS:
        out_cache = None if cache_dir is None else Path(cache_dir) / split
        caches[split] = extract_split(
            net,
            palette,
            ident,
            dataset,
            split,
            out_cache,
            data_dir=data_dir,
            token_cache=token_cache,
            progress=progress,
            layers=layers,
            site=site,
            batch_size=batch_size,
            bert_masks=bert_masks if net.config.objective == "bert" else 0,
            seed=seed,
            compute=compute,
            max_rows={"train": train_size, "val": val_size, "test": test_size}[split],
            overwrite=overwrite,
        )
    extract_seconds = time.perf_counter() - t0
    layers, sites = select_layers(caches["train"], layers)
    meta = dict(
        model=random_twin(path.name) if random_weights else path.name,
        objective=net.config.objective,
        dataset=caches["test"].manifest.get("dataset"),
        site_kind=site,
    )
    if method == "lbfgs":
        feats, _, _ = load_features(caches, layers)  # in memory: full-batch L-BFGS
        rows, predictions = probe_lbfgs(
            feats["train"],
            feats["val"],
            feats["test"],
            layers,
            meta=meta,
            sites=sites,
            backend=backend,
            device=device,
            standardize=standardize,
            seed=seed,
            progress=progress,
            return_predictions=True,
        )
        if concat_layers is not None:
            from igpt_eval.probes.concat import probe_concat

            best = summary(to_frame(rows))
            c_rows, c_pred = probe_concat(
                feats, layers, sites, int(best[best.best].layer.iloc[0]), concat_layers,
                meta=meta, backend=backend, device=device, standardize=standardize, seed=seed,
                progress=progress,
            )  # fmt: skip
            rows += c_rows
            predictions.update(c_pred)
    else:
        from igpt_eval.probes.sgd import probe_sgd

        # SGD whitens (train statistics) unless told not to touch the features: one rate
        # grid then suits every layer, and it converges in a few epochs.
        rows, predictions = probe_sgd(
            caches,
            layers,
            meta=meta,
            sites=sites,
            device=device,
            seed=seed,
            preprocess="whiten" if standardize else "none",
            return_predictions=True,
        )
    if pixels or native_pixels:
        from igpt_eval.probes.pixels import probe_pixel_controls

        name, split_seed = run_defaults(dataset, ident)
        px, px_pred = probe_pixel_controls(
            palette, name, n_px=net.config.n_px, pixels=pixels, native=native_pixels,
            split_seed=split_seed, data_dir=data_dir, token_cache=token_cache, device=device,
            seed=seed, train_size=train_size, val_size=val_size, test_size=test_size,
        )  # fmt: skip
        rows += px
        predictions.update(px_pred)  # refuses test images other than the caches'
    df = to_frame(rows)
    diffs = to_frame(paired_rows(df, predictions, seed=seed))
    df = to_frame(pd.concat([df, diffs], ignore_index=True))
    df.attrs["extract_seconds"] = extract_seconds
    df.attrs["caches"] = {split: str(c.path) for split, c in caches.items()}  # for reuse
    if out is not None:
        save_results(df, out, predictions=predictions)
    return (df, predictions) if return_predictions else df


def summary(df: pd.DataFrame, probe: str | None = None) -> pd.DataFrame:
    """One row per layer: validation and test accuracy (with CI), chosen C or lr, iterations.

    ``df`` holds one model's results; ``probe`` picks one probe's rows (default: every probe
    but the raw-pixel controls and the multi-layer probe, which :func:`probe_model` adds to
    a model's results).
    ``best`` marks the layer with the highest *validation* accuracy (what a user may select
    on; among equal ones, the earliest); ``last`` the final layer.
    """
    if "probe" in df:
        others = [*PIXEL_CONTROLS, CONCAT]
        df = df[df.probe == probe] if probe is not None else df[~df.probe.isin(others)]
    acc = df[df.metric == "accuracy"]
    val = acc[(acc.split == "val") & acc.selected.astype(bool)]
    test = acc[acc.split == "test"]
    s = test[
        ["layer", "site", "value", "ci_low", "ci_high", "C", "lr", "n_iter", "converged"]
    ].rename(columns={"value": "test_acc"})
    s = s.merge(val[["layer", "value"]].rename(columns={"value": "val_acc"}), on="layer")
    s = s.sort_values("layer").reset_index(drop=True)
    if s.empty:
        raise IGPTError("no layer has both validation and test accuracy rows to summarise")
    s["best"] = s.index == s.val_acc.idxmax()  # ties: the earliest such layer, one mark only
    s["last"] = s.layer == s.layer.max()
    return s


def format_summary(
    s: pd.DataFrame, differences: pd.DataFrame | None = None, concat: pd.Series | None = None
) -> str:
    """The terminal table of :func:`summary`; with ``concat`` (the multi-layer probe's
    summary row, :func:`igpt_eval.summaries.concat_summaries`), one line for it under the
    table; with ``differences`` (the model's results, or their paired-difference rows), the
    paired lines under it: best − last layer, best − each pixel control and − the
    random-weights twin, the multi-layer probe − best, with paired 95% CIs and McNemar's p
    (:func:`igpt_eval.paired.paired_lines`)."""
    hyper = "C" if s["lr"].isna().all() else "lr"
    lines = [
        f"{'layer':>5}  {'site':<18} {'val acc':>8}  {'test acc [95% CI]':<24} "
        f"{'best ' + hyper:>9} {'iters':>6}"
    ]
    for r in s.itertuples():
        mark = " <- best (val)" if r.best else ""
        mark += " (last)" if r.last else ""
        conv = "" if r.converged else "*"
        h = r.C if hyper == "C" else r.lr
        lines.append(
            f"{r.layer:>5}  {r.site:<18} {100 * r.val_acc:7.2f}%  "
            f"{100 * r.test_acc:6.2f}% [{100 * r.ci_low:5.2f}, {100 * r.ci_high:5.2f}]   "
            f"{h:9.3g} {r.n_iter:>5}{conv}{mark}"
        )
    if concat is not None:
        conv = "" if concat.converged else "*"
        lines.append(
            f"multi-layer probe {concat.site}, around layer {concat.layer} (best on val): val "
            f"{100 * concat.val_acc:.2f}%, test {100 * concat.test_acc:.2f}% "
            f"[{100 * concat.ci_low:.2f}, {100 * concat.ci_high:.2f}], best C "
            f"{concat.C:.3g}, {concat.n_iter}{conv} iters"
        )
    if not (s.converged.all() and (concat is None or concat.converged)):
        lines.append("* the solver stopped before its tolerance (recorded in the results)")
    if differences is not None:
        from igpt_eval.paired import paired_lines

        lines += paired_lines(differences)
    return "\n".join(lines)
