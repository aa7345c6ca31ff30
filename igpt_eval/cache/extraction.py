"""``igpt_eval.extract``: a checkpoint and a dataset in, an activation cache out.

The convenience layer over :func:`igpt_eval.cache.write_cache` that the ``extract`` command and
notebooks use: it loads the model and its palette, loads the dataset split at the model's
``n_px``, reuses (or builds) the token cache, and records the inputs' identity in the
activation cache's manifest.

    cache = igpt_eval.extract("models/fmnist-ar", "fashion-mnist", split="test")
    cache[4]          # float32 memmap [10000, d]: layer 4's pooled ln_1 features
    extract(MODEL, DataSource("cifar10", data_dir="~/data"), "train",
            settings=ExtractSettings(dtype="float16"), max_rows=5000)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

from igpt_eval.cache.manifest import CacheInputs
from igpt_eval.cache.settings import ExtractSettings
from igpt_eval.cache.writer import write_cache
from igpt_eval.data import ImageDataset, load_dataset, load_tokens
from igpt_eval.data.source import DataSource
from igpt_eval.data.splits import subset_rows
from igpt_eval.defaults import cache_root
from igpt_eval.errors import IGPTError
from igpt_eval.io import array_hash
from igpt_eval.model.devices import resolve_compute
from igpt_eval.model.loading import open_model, state_dict_hash
from igpt_eval.model.sources import ModelIdentity
from igpt_eval.train import distributed as dist

log = logging.getLogger(__name__)


def extract(
    model,
    dataset: str | DataSource | ImageDataset | None = None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    *,
    settings: ExtractSettings | None = None,
    palette=None,
    device: str = "auto",
    max_rows: int | None = None,
    overwrite: bool = False,
):
    """The activation cache of ``model`` on one split of ``dataset``, built if needed.

    ``model`` is a checkpoint folder (its ``palette.npy`` is used) or an ``IGPT`` with
    ``palette=``. ``dataset`` is a registry name or a :class:`~igpt_eval.data.source.DataSource`
    (default: the dataset and split seed of the folder's ``run.json``), loaded at the model's
    ``n_px``, or an :class:`~igpt_eval.data.ImageDataset` (``split`` is then its own).
    Tokens come from the source's token cache (default: the user cache's ``tokens/``, see
    :func:`igpt_eval.defaults.cache_root`). ``settings`` are what is stored and how it is
    computed (:class:`~igpt_eval.cache.settings.ExtractSettings`). ``out`` defaults to a
    folder under the user cache's ``activations/`` named after the tokens, the weights and
    the settings. ``max_rows`` caps the split at a stratified sample (see
    :func:`extract_split`).
    """
    model, palette, ident = open_model(model, palette, device)
    return extract_split(
        model, palette, ident, dataset, split, out,
        settings=settings, max_rows=max_rows, overwrite=overwrite,
    )  # fmt: skip


def extract_split(
    model,
    palette,
    ident: ModelIdentity,
    dataset: str | DataSource | ImageDataset | None,
    split: str,
    out=None,
    *,
    settings: ExtractSettings | None = None,
    max_rows: int | None = None,
    overwrite: bool = False,
):
    """:func:`extract` for a model already opened by :func:`open_model` (the CLI reuses one
    model for several splits).

    ``max_rows`` caps the split at that many images, a stratified sample drawn with the
    split seed (see :func:`subset_rows`); the token cache still holds the whole split, and
    the activation cache's fingerprint names the sample."""
    settings = settings or ExtractSettings()
    n_px = model.config.n_px
    if isinstance(dataset, ImageDataset):
        ds, source = dataset, DataSource()
        if ds.n_px != n_px:
            raise IGPTError(f"the dataset's images are {ds.n_px} px; the model reads {n_px} px")
    else:
        source = DataSource.of(dataset)
        name, seed = ident.data(source.name, source.split_seed)
        ds = load_dataset(name, split=split, n_px=n_px, data_dir=source.data_dir, seed=seed)
    if len(ds) == 0:
        raise IGPTError(f"the {ds.split} split of {ds.name} has no images: nothing to extract")
    # Every process reads the same token cache; rank 0 builds it first.
    tokens = dist.main_first(lambda: load_tokens(ds, palette, source.token_cache))
    if ds.channels == 1 and palette.channels == 3 and dist.is_main():
        log.warning("note: %s is grey; its images are read as RGB (R = G = B) to fit the "
                    "model's %d-colour RGB palette", ds.name, palette.k)  # fmt: skip
    inputs = CacheInputs(
        model=ident.model,
        weights_hash=ident.weights_hash,
        palette_hash=palette.hash,
        dataset=ds.name,
        split=ds.split,
        dataset_fingerprint=ds.fingerprint,
        hub=ident.hub,
    )
    token_rows, labels = tokens.tokens, tokens.labels
    rows = None
    if max_rows is not None and max_rows < len(labels):
        rows = subset_rows(labels, max_rows, ds.seed)
        token_rows, labels = token_rows[rows], labels[rows]
        sample = hashlib.sha256(f"{ds.fingerprint}|{array_hash(rows)}".encode()).hexdigest()
        inputs = dataclasses.replace(
            inputs,
            split=f"{ds.split} ({len(rows)} of {len(ds)} images, stratified)",
            dataset_fingerprint=sample[:16],
        )
    settings = settings.replace(compute=resolve_compute(settings.compute, model.device))
    if out is None:
        tag = settings.tag(rows=None if rows is None else len(rows))
        out = (
            cache_root() / "activations" / f"{tokens.path.name}-m{state_dict_hash(model)[:8]}-{tag}"
        )
    return write_cache(model, token_rows, labels, out, settings, inputs=inputs, overwrite=overwrite)
