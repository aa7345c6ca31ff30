"""Compare models layer by layer on one dataset: linear probes, kNN, CKA, a pixel baseline.

What ``igpt-eval compare`` runs; notebooks call :func:`compare_models` directly::

    c = compare_models(["models/fmnist-ar", "models/fmnist-bert"])
    c.results        # tidy rows (probe = "lbfgs", "knn", "pixels", ...), results.COLUMNS first
    c.cka            # tidy CKA rows: model_a, layer_a, model_b, layer_b, value
    c.predictions    # per-example test predictions of every probe (results.Predictions)

Every model is probed by :func:`igpt_eval.studies.probe.probe_model` (same protocol, same
train/val/test split), and the kNN and CKA analyses read the same activation caches:

- **kNN** (DINO's protocol, :func:`igpt_eval.analysis.similarity.knn_accuracy`): reported with the
  memory bank train + val (the data the linear probe is refit on) and the test split as
  queries, bootstrap 95% CI; a layer is chosen by validation queries against a train-only
  bank (``split = "val"`` rows), never by test.
- **CKA** (:func:`igpt_eval.analysis.similarity.cka_matrix`): on the test split, every pair
  of layers within each model and between every pair of models (the test images are the same rows in
  the same order for all models, which is checked).
- **Pixel controls** (:mod:`igpt_eval.probes.pixels`): the same L-BFGS protocol on what the
  model sees, the palette-quantised image (each token decoded to its palette colour in
  [-1, 1], flattened to n_px²·channels features; ``model = probe = "pixels"``), and on the
  dataset's own pixels at native resolution (``"pixels_native"``; ``native_pixels``, on by
  default as in ``probe``: no extraction, so cheap). Shared by all models (their palette and
  n_px must match); ``layer = 0``.
- **Random-weights control** (``random_control``, on by default): each model's twin, the
  same architecture at the initialisation its run started from
  (:func:`igpt_eval.model.loading.open_model` with ``random_weights``), probed alike: same
  protocol, splits and training sample, its own activation caches (cached like the
  others). Its rows are named ``"<model> (random weights)"``; no kNN or CKA for it.
- **Multi-layer probe** (``concat_layers`` = K, off by default): per model, the K layers
  around the one chosen on validation, concatenated (:mod:`igpt_eval.probes.concat`).
- **Paired differences** (:mod:`igpt_eval.probes.paired`): from the per-example test predictions
  of every probe, best (on validation) − last layer of each model and probe, best − each
  pixel control, best − the random-weights twin's best, the multi-layer probe − best, and
  model A best − model B best for each pair, with paired bootstrap 95% CIs and McNemar's
  exact p-values (``metric = "accuracy_diff"`` rows).

:func:`igpt_eval.reporting.comparison.write_comparison` writes a comparison's files and
figure; its table is :func:`igpt_eval.reporting.tables.comparison_table` of the results.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from igpt_eval.analysis.layers import cka_rows, knn_rows
from igpt_eval.cache import ActivationCache
from igpt_eval.cache.manifest import Manifest
from igpt_eval.data.source import DataSource
from igpt_eval.defaults import DEFAULT_MODELS, cache_root
from igpt_eval.errors import IGPTError
from igpt_eval.io import file_hash
from igpt_eval.model.checkpoint import CONFIG
from igpt_eval.model.devices import resolve_device
from igpt_eval.model.record import RunRecord
from igpt_eval.model.sources import ModelSource, resolve_model, source_config, source_palette
from igpt_eval.names import PIXEL_CONTROLS, SPLITS, Metric, ModelKind, bare_name, model_names
from igpt_eval.predictions import Predictions, Scored
from igpt_eval.probes.concat import check_concat
from igpt_eval.probes.paired import paired_rows
from igpt_eval.probes.pixels import (
    probe_pixel_controls,
)
from igpt_eval.results import to_frame
from igpt_eval.studies.probe import probe_model, provenance
from igpt_eval.studies.settings import ProbeSettings

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    """A checkpoint folder as far as a comparison needs it (read without loading weights)."""

    name: str
    path: Path
    objective: str
    n_layer: int
    n_px: int
    palette: object  # igpt_eval.data.palette.Palette
    dataset: str
    seed: int  # the run's: its untrained twin is rebuilt from it
    split_seed: int  # the train/val split it was trained on
    source: ModelSource | None = None  # where it came from (what probe_model is given)

    def to_json(self) -> dict:
        return dict(
            path=str(self.path.resolve()),
            model=self.source.spec if self.source else str(self.path),
            objective=self.objective,
            n_layer=self.n_layer,
            n_px=self.n_px,
            palette_hash=self.palette.hash,
            dataset=self.dataset,
            seed=self.seed,
            split_seed=self.split_seed,
        )


@dataclass
class Comparison:
    """What :func:`compare_models` returns."""

    results: pd.DataFrame
    cka: pd.DataFrame
    models: list[ModelInfo]
    predictions: Predictions | None = None


def model_info(model, dataset: str | None = None) -> ModelInfo:
    """What a comparison needs of a model (any source :func:`resolve_model` takes), read
    from its config, palette and ``run.json`` without loading its weights."""
    source = resolve_model(model)
    cfg = source_config(source)
    palette = source_palette(source)
    if palette is None:
        raise IGPTError(
            f"{source.spec} has no palette; its colours (and pixel baseline) are unknown"
        )
    run = RunRecord.read(source.path) if source.is_checkpoint else RunRecord()
    name = dataset or run.dataset
    if not name:
        raise IGPTError(f"{source.spec} records no dataset (no run.json); pass --dataset")
    return ModelInfo(source.label, source.path, cfg.objective, cfg.n_layer, cfg.n_px, palette,
                     name, run.seed, run.data_seed, source)  # fmt: skip


def check_models(models, dataset: str | None = None) -> list[ModelInfo]:
    """The models of one comparison; they must share dataset, palette, n_px and split seed
    (else the "same splits, same inputs" premise fails): one :class:`IGPTError` if not."""
    infos = [model_info(m, dataset) for m in models]
    if not infos:
        raise IGPTError("give at least one model folder to compare")
    names = [m.name for m in infos]
    if len(set(names)) != len(names) or model_names(names) != names:
        raise IGPTError(
            "model folder names must be distinct, none a control's name "
            f"({', '.join(PIXEL_CONTROLS)} or '... (random weights)'): {names}"
        )
    first = infos[0]
    for m in infos[1:]:
        for what, a, b in (
            ("datasets", first.dataset, m.dataset),
            ("palettes", first.palette.hash, m.palette.hash),
            ("image sizes (n_px)", first.n_px, m.n_px),
            ("train/val split seeds", first.split_seed, m.split_seed),
        ):
            if a != b:
                raise IGPTError(
                    f"cannot compare {first.name} and {m.name}: different {what} ({a} vs {b}); "
                    "a comparison needs the same inputs and splits"
                )
    return infos


def _cache_folder(root: Path, m: ModelInfo, s: ProbeSettings, random: bool = False) -> Path:
    """The activation cache folder of ``m`` (or of its random-weights twin) probed with
    ``s``: named after the weights and every setting the features depend on."""
    if random:  # the twin is a function of the architecture and the run's seed only
        tag = f"random-{bare_name(m.name)}-init{m.seed}-{file_hash(m.path / CONFIG)[:8]}"
    else:
        tag = m.name  # its label: name and weights hash
    tag += f"-{s.site}-s{s.seed}"
    # The sample is part of the name: caches of another sample hold other rows.
    tag += "".join(f"-{split[:2]}{n}" for split, n in s.sizes.items() if n is not None)
    tag += f"-masks{s.bert_masks}" if m.objective == "bert" else ""
    tag += "" if s.cache_dtype == "float32" else f"-{s.cache_dtype}"
    return root / (tag + ("-bf16" if s.compute == "bfloat16" else ""))


def _rows_meta(m: ModelInfo, dataset: str, site: str, manifest: Manifest) -> dict:
    """The identifying columns of a model's kNN rows, as probe_model writes its own."""
    return dict(model=m.name, model_kind=ModelKind.TRAINED, objective=m.objective,
                dataset=dataset, site_kind=site, **provenance(manifest))  # fmt: skip


def source_of(m: ModelInfo, data: DataSource) -> DataSource:
    """Where ``m``'s images come from: its dataset and split seed (those its run recorded,
    unless ``data`` names others) in ``data``'s folders."""
    seed = m.split_seed if data.split_seed is None else data.split_seed
    return dataclasses.replace(data, name=m.dataset, split_seed=seed)


def pixel_rows(m: ModelInfo, settings: ProbeSettings, data: DataSource) -> Scored:
    """The raw-pixel linear-probe controls of ``settings`` (same protocol, splits and
    stratified samples as the models) on ``m``'s images: the palette-quantised image
    (``pixels``) and the native-resolution one (``native_pixels``); see
    :func:`igpt_eval.probes.pixels.probe_pixel_controls`."""
    s = settings
    return probe_pixel_controls(
        m.palette, source_of(m, data), n_px=m.n_px, pixels=s.pixels, native=s.native_pixels,
        sizes=s.sizes, device=s.device, seed=s.seed,
    )  # fmt: skip


# --------------------------------------------------------------------------- driver
def compare_models(
    models=DEFAULT_MODELS,
    dataset: str | DataSource | None = None,
    settings: ProbeSettings | None = None,
    *,
    cache_dir: str | Path | None = None,
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    cka_max_rows: int | None = 10_000,
    random_control: bool = True,
) -> Comparison:
    """Probe every layer of each model, run kNN and CKA on the same caches, probe the
    controls (the pixel baseline; with ``native_pixels`` the native-resolution pixels; with
    ``random_control`` each model's random-weights twin), and with ``concat_layers`` = K the
    multi-layer probe of each model.

    ``settings`` (a :class:`~igpt_eval.studies.settings.ProbeSettings`; default: its
    defaults, as ``probe_model``'s) are the site, extraction, sample, seed and controls, the
    same for every model, and ``dataset`` (a name or a
    :class:`~igpt_eval.data.source.DataSource`; default: the models' own) where their images
    are read; every layer is probed with L-BFGS. ``cache_dir`` (default:
    ``activations/compare`` in the user cache, :func:`igpt_eval.defaults.cache_root`) holds
    one activation cache folder per model (and per random-weights twin), named after its
    weights and settings, so reruns reuse them.
    """
    s = settings or ProbeSettings()
    if s.method != "lbfgs" or s.layers is not None or s.random_weights:
        raise IGPTError(
            "a comparison probes every layer of each model with L-BFGS (random_control adds "
            "the random-weights twins): give no method, layers or random_weights"
        )
    data = DataSource.of(dataset)
    infos = check_models(models, data.name)
    if s.concat_layers is not None:  # before any extraction: a bad K fails at once
        for m in infos:
            check_concat(s.concat_layers, m.n_layer + 1)
    s = s.replace(device=str(resolve_device(s.device)))
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "activations/compare"
    frames, test_caches, predictions = [], {}, Predictions()
    # The pixel controls are probed once for all models, below.
    each = s.replace(pixels=False, native_pixels=False)
    knn = dict(k=knn_k, temperature=knn_temperature, device=s.device, seed=s.seed)
    for m in infos:
        folder = _cache_folder(root, m, s)
        log.info(f"[compare] {m.name}: linear probes of every layer (caches in {folder})")
        df, pred = probe_model(m.source, source_of(m, data), each, cache_dir=folder)
        caches = {split: ActivationCache.open(folder / split) for split in SPLITS}
        dataset_name = df.dataset.iloc[0]
        log.info(f"[compare] {m.name}: kNN (k={knn_k}, T={knn_temperature}) of every layer")
        k_rows, k_pred = knn_rows(
            caches,
            _rows_meta(m, dataset_name, s.site, caches["test"].manifest),
            **knn,
        )
        # Its paired rows are recomputed below, with every contrast of the comparison.
        frames += [df[df.metric != Metric.DIFF], to_frame(k_rows)]
        predictions.update(pred).update(k_pred)
        test_caches[m.name] = caches["test"]
        if random_control:
            folder = _cache_folder(root, m, s, random=True)
            log.info(f"[compare] {m.name}: the random-weights control (caches in {folder})")
            twin = each.replace(random_weights=True, concat_layers=None)
            df, pred = probe_model(m.source, source_of(m, data), twin, cache_dir=folder)
            frames.append(df[df.metric != Metric.DIFF])
            predictions.update(pred)
    if s.pixels or s.native_pixels:
        log.info("[compare] raw-pixel controls: linear probes of the images")
        px, pred = pixel_rows(infos[0], s, data)
        predictions.update(pred)  # refuses test images other than the models'
        frames.append(to_frame(px))
    log.info("[compare] linear CKA between layers (test split)")
    results = to_frame(pd.concat(frames, ignore_index=True))
    diffs = to_frame(paired_rows(results, predictions, seed=s.seed))
    results = to_frame(pd.concat([results, diffs], ignore_index=True))
    cka = cka_rows(test_caches, dataset_name, max_rows=cka_max_rows, seed=s.seed)
    c = Comparison(results, cka, infos, predictions)
    return c
