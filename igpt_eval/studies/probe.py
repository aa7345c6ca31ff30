"""Probe a model end to end: caches for train/val/test, a probe per layer, results files.

This is what ``igpt-eval probe`` runs; notebooks can call :func:`probe_model` directly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from igpt_eval.analysis.paired import differences
from igpt_eval.cache.extraction import extract_split
from igpt_eval.cache.manifest import Manifest
from igpt_eval.data.source import DataSource
from igpt_eval.defaults import DEFAULT_MODEL
from igpt_eval.errors import IGPTError
from igpt_eval.io import write_json
from igpt_eval.model.devices import resolve_device
from igpt_eval.model.loading import open_model
from igpt_eval.model.sources import resolve_model
from igpt_eval.names import SPLITS, ModelKind, random_twin
from igpt_eval.predictions import Predictions
from igpt_eval.probes.concat import check_concat, concat_span, probe_concat
from igpt_eval.probes.paired import paired_rows
from igpt_eval.probes.pixels import probe_pixel_controls
from igpt_eval.probes.protocol import Features, Protocol, probe_lbfgs
from igpt_eval.probes.sgd import SGDProtocol, probe_sgd
from igpt_eval.results import MODELS_FILE, save_results, summary, to_frame
from igpt_eval.studies.settings import ProbeSettings


class ProbeRun(NamedTuple):
    """What :func:`probe_model` returns: the tidy ``results`` (every fit, the controls, the
    paired differences) and the per-example test ``predictions`` behind them. Unpacks as
    ``results, predictions = probe_model(...)``."""

    results: pd.DataFrame
    predictions: Predictions

    @property
    def summary(self) -> pd.DataFrame:
        """One row per layer: validation and test accuracy, the chosen C, the test CI, and
        which layer is ``best`` (on validation) and ``last``."""
        return summary(self.results)

    @property
    def differences(self) -> pd.DataFrame:
        """The paired contrasts (best − last layer, best − pixels, ...), one row each, with
        the bootstrap 95% CI and McNemar's p-value."""
        cols = ["contrast", "model", "layer", "vs_model", "vs_layer", "value", "ci_low",
                "ci_high", "p_value"]  # fmt: skip
        return differences(self.results)[cols].reset_index(drop=True)


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


def provenance(manifest: Manifest) -> dict:
    """The result columns that say which features were probed, read from a cache's manifest:
    the weights they came from and the BERT masks per image (0: none)."""
    return dict(weights_hash=manifest.weights_hash, bert_masks=manifest.bert_masks)


def probe_model(
    model: str | Path = DEFAULT_MODEL,
    dataset: str | DataSource | None = None,
    settings: ProbeSettings | None = None,
    *,
    cache_dir: str | Path | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> ProbeRun:
    """Extract (or reuse) the model's features on train/val/test, probe every requested
    layer, save ``results.parquet``/``.csv`` and the per-example test predictions
    ``predictions.npz`` into ``out`` (when given) and return both (a :class:`ProbeRun`).

    What is extracted and probed is ``settings`` (a :class:`ProbeSettings`; default: its
    defaults): ``probe_model(path, settings=ProbeSettings(method="sgd", test_size=None))``.
    ``dataset`` is a registry name or a :class:`~igpt_eval.data.source.DataSource` (where
    the files and the token caches live; default: the run's own dataset), ``cache_dir`` the
    activation caches' folder (one per split; default: under ``activations/`` in the user
    cache folder); a cache there built from other inputs is refused unless ``overwrite``.

    ``method`` is ``lbfgs`` (features in memory, C chosen on validation) or ``sgd`` (streamed
    from the caches). With ``pixels`` (the default), the raw-pixel baseline is probed too
    (L-BFGS on the palette-quantised images, from the same token caches, splits and training
    sample: :func:`igpt_eval.probes.pixels.probe_pixels`; its rows have ``model = probe =
    "pixels"``). The table then ends with paired-difference rows (``metric =
    "accuracy_diff"``, :mod:`igpt_eval.probes.paired`): the layer chosen on validation − the
    last layer, and − the pixels, each with a paired bootstrap 95% CI and McNemar's p-value.
    ``native_pixels`` adds the dataset's raw pixels at their native resolution as a second
    control (:func:`igpt_eval.probes.pixels.probe_native_pixels`; ``model = probe =
    "pixels_native"``, contrast ``best_vs_pixels_native``).

    ``random_weights`` probes the model's random-weights control instead of the model: the
    same architecture at the initialisation its training run started from
    (:meth:`igpt_eval.model.igpt.IGPT.initialised` with the run's seed), extracted into caches
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
    ``standardize=False``."""
    s = settings or ProbeSettings()
    source = resolve_model(model)
    s = s.replace(device=str(resolve_device(s.device)))  # once: every stage runs there
    net, palette, ident = open_model(source, device=s.device, random_weights=s.random_weights)
    layers = None if s.layers is None else list(s.layers)
    data = DataSource.of(dataset)
    # Before any extraction: a bad K fails at once, not minutes later.
    check_concat(
        s.concat_layers, net.config.n_layer + 1 if layers is None else len(set(layers)), s.method
    )
    caches = {}
    t0 = time.perf_counter()
    for split in SPLITS:
        out_cache = None if cache_dir is None else Path(cache_dir) / split
        caches[split] = extract_split(
            net, palette, ident, data, split, out_cache,
            settings=s.extraction(net.config.objective), max_rows=s.sizes[split],
            overwrite=overwrite,
        )  # fmt: skip
    extract_seconds = time.perf_counter() - t0
    layers, sites = select_layers(caches["train"], layers)
    meta = dict(
        model=random_twin(source.label) if s.random_weights else source.label,
        model_kind=ModelKind.RANDOM if s.random_weights else ModelKind.TRAINED,
        objective=net.config.objective,
        dataset=caches["test"].manifest.dataset,
        site_kind=s.site,
        **provenance(caches["test"].manifest),
    )
    if s.method == "lbfgs":
        rows, predictions = _probe_lbfgs(caches, layers, sites, meta, s)
    else:
        # SGD whitens (train statistics) unless told not to touch the features: one rate
        # grid then suits every layer, and it converges in a few epochs.
        protocol = SGDProtocol(
            preprocess="whiten" if s.standardize else "none", device=s.device, seed=s.seed
        )
        rows, predictions = probe_sgd(caches, layers, meta=meta, sites=sites, protocol=protocol)
    if s.pixels or s.native_pixels:
        name, split_seed = ident.data(data.name, data.split_seed)
        px, px_pred = probe_pixel_controls(
            palette, dataclasses.replace(data, name=name, split_seed=split_seed),
            n_px=net.config.n_px, pixels=s.pixels, native=s.native_pixels, sizes=s.sizes,
            device=s.device, seed=s.seed,
        )  # fmt: skip
        rows += px
        predictions.update(px_pred)  # refuses test images other than the caches'
    df = to_frame(rows)
    diffs = to_frame(paired_rows(df, predictions, seed=s.seed))
    df = to_frame(pd.concat([df, diffs], ignore_index=True))
    df.attrs["extract_seconds"] = extract_seconds
    df.attrs["caches"] = {split: str(c.path) for split, c in caches.items()}  # for reuse
    if out is not None:
        save_results(df, out, predictions=predictions)
        # Where the model lives, for a report drawn from this folder (its log, its palette).
        entry = dict(path=str(source.path.resolve()), model=source.spec)
        write_json(Path(out) / MODELS_FILE, {meta["model"]: entry})
    return ProbeRun(df, predictions)


def layer_groups(caches: dict, layers: list[int], max_bytes: int) -> list[list[int]]:
    """``layers`` in consecutive groups whose float32 features, all three splits together,
    fit in ``max_bytes`` (at least one layer a group): the L-BFGS protocol is independent
    layer by layer, so a model too large to hold every layer's features in memory (iGPT-L:
    49 sites x 1536 floats x 60,000 images, 18 GB) is probed a group at a time, with the
    same results."""
    per_layer = 4 * caches["train"].manifest.dim * sum(len(c.labels) for c in caches.values())
    size = max(1, int(max_bytes // max(per_layer, 1)))
    return [layers[i : i + size] for i in range(0, len(layers), size)]


def _probe_lbfgs(caches, layers, sites, meta, s: ProbeSettings):
    """The L-BFGS protocol on every layer (features in memory: full batch, a group of
    layers at a time, :func:`layer_groups`) and, with ``concat_layers``, the multi-layer
    probe around the layer chosen on validation."""
    protocol = Protocol(backend=s.backend, device=s.device, standardize=s.standardize, seed=s.seed)
    opts = dict(meta=meta, protocol=protocol)
    rows, predictions = [], Predictions()
    for group in layer_groups(caches, layers, s.max_feature_bytes):
        feats, _, group_sites = load_features(caches, group)
        r, p = probe_lbfgs(
            feats["train"], feats["val"], feats["test"], group, sites=group_sites, **opts,
        )  # fmt: skip
        rows += r
        predictions.update(p)
        del feats  # the next group's features replace these
    if s.concat_layers is not None:
        best = summary(to_frame(rows))
        chosen = int(best[best.best].layer.iloc[0])
        span = concat_span(layers, chosen, s.concat_layers)
        feats, _, span_sites = load_features(caches, span)
        c_rows, c_pred = probe_concat(feats, span, span_sites, chosen, s.concat_layers, **opts)
        rows += c_rows
        predictions.update(c_pred)
    return rows, predictions
