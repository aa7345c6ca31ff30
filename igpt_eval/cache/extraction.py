"""``igpt_eval.extract``: a checkpoint and a dataset name in, an activation cache out.

The convenience layer over :func:`igpt_eval.cache.write_cache` that the ``extract`` command and
notebooks use: it loads the model and its palette, loads the dataset split at the model's
``n_px``, reuses (or builds) the token cache, and records the inputs' identity in the
activation cache's manifest.

    cache = igpt_eval.extract("models/fmnist-ar", "fashion-mnist", split="test")
    cache[4]          # float32 memmap [10000, d]: layer 4's pooled ln_1 features
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys

from igpt_eval.cache.writer import write_cache
from igpt_eval.data import ImageDataset, load_dataset, load_tokens
from igpt_eval.data.splits import subset_rows
from igpt_eval.defaults import BERT_MASKS, cache_root
from igpt_eval.errors import IGPTError
from igpt_eval.io import array_hash
from igpt_eval.model.devices import resolve_compute
from igpt_eval.model.loading import open_model, run_defaults, state_dict_hash
from igpt_eval.train import distributed as dist


def extract(
    model,
    dataset=None,
    split: str = "test",
    out: str | os.PathLike | None = None,
    *,
    palette=None,
    layers=None,
    site: str = "ln_1",
    batch_size: int | None = None,
    dtype: str = "float32",
    bert_masks: int = BERT_MASKS,
    seed: int = 0,
    full_sequence_layer: int | None = None,
    data_dir: str | os.PathLike | None = None,
    split_seed: int | None = None,
    token_cache: str | os.PathLike | None = None,
    device: str = "auto",
    compute: str = "auto",
    max_rows: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
):
    """The activation cache of ``model`` on one split of ``dataset``, built if needed.

    ``model`` is a checkpoint folder (its ``palette.npy`` is used) or an ``IGPT`` with
    ``palette=``. ``dataset`` is a registry name (default: the one in the folder's
    ``run.json``) loaded at the model's ``n_px`` and split with ``split_seed`` (default: the
    training run's seed, else 0), or an :class:`~igpt_eval.data.ImageDataset` (``split`` is
    then its own). Tokens come from the token cache under ``token_cache`` (default: the
    user cache's ``tokens/``, see :func:`igpt_eval.defaults.cache_root`). ``out`` defaults
    to a folder under its ``activations/`` named after the tokens, the weights and the
    settings. ``max_rows`` caps the split at a
    stratified sample (see :func:`extract_split`). Other arguments are those of
    :func:`igpt_eval.cache.write_cache` (``compute="bfloat16"``: bf16 autocast).
    """
    model, palette, ident = open_model(model, palette, device)
    return extract_split(
        model, palette, ident, dataset, split, out,
        layers=layers, site=site, batch_size=batch_size, dtype=dtype, bert_masks=bert_masks,
        seed=seed, full_sequence_layer=full_sequence_layer, data_dir=data_dir,
        split_seed=split_seed, token_cache=token_cache, overwrite=overwrite, progress=progress,
        compute=compute, max_rows=max_rows,
    )  # fmt: skip


def extract_split(
    model,
    palette,
    ident: dict,
    dataset,
    split: str,
    out=None,
    *,
    data_dir=None,
    split_seed: int | None = None,
    token_cache=None,
    max_rows: int | None = None,
    progress: bool = True,
    **settings,
):
    """:func:`extract` for a model already opened by :func:`open_model` (the CLI reuses one
    model for several splits). ``settings`` go to :func:`igpt_eval.cache.write_cache`.

    ``max_rows`` caps the split at that many images, a stratified sample drawn with the
    split seed (see :func:`subset_rows`); the token cache still holds the whole split, and
    the activation cache's fingerprint names the sample."""
    n_px = model.config.n_px
    dataset, seed = run_defaults(dataset, ident, split_seed)
    if isinstance(dataset, ImageDataset):
        ds = dataset
        if ds.n_px != n_px:
            raise IGPTError(f"the dataset's images are {ds.n_px} px; the model reads {n_px} px")
    else:
        ds = load_dataset(dataset, split=split, n_px=n_px, data_dir=data_dir, seed=seed)
    if len(ds) == 0:
        raise IGPTError(f"the {ds.split} split of {ds.name} has no images: nothing to extract")
    # Every process reads the same token cache; rank 0 builds it first.
    tokens = dist.main_first(
        lambda: load_tokens(ds, palette, token_cache, progress=progress and dist.is_main())
    )
    if ds.channels == 1 and palette.channels == 3 and progress and dist.is_main():
        print(f"note: {ds.name} is grey; its images are read as RGB (R = G = B) to fit the "
              f"model's {palette.k}-colour RGB palette", file=sys.stderr)  # fmt: skip
    identity = {
        "model": ident.get("model"),
        "weights_hash": ident.get("weights_hash"),
        **{k: ident[k] for k in ("repo", "revision", "commit") if ident.get(k)},
        "palette_hash": palette.hash,
        "dataset": ds.name,
        "split": ds.split,
        "dataset_fingerprint": ds.fingerprint,
    }
    token_rows, labels = tokens.tokens, tokens.labels
    if max_rows is not None and max_rows < len(labels):
        rows = subset_rows(labels, max_rows, ds.seed)
        token_rows, labels = token_rows[rows], labels[rows]
        sample = hashlib.sha256(f"{ds.fingerprint}|{array_hash(rows)}".encode()).hexdigest()
        identity["split"] = f"{ds.split} ({len(rows)} of {len(ds)} images, stratified)"
        identity["dataset_fingerprint"] = sample[:16]
        settings = dict(settings, rows=len(rows))
    settings = dict(settings, compute=resolve_compute(settings.get("compute"), model.device))
    if out is None:
        out = (
            cache_root()
            / "activations"
            / f"{tokens.path.name}-m{state_dict_hash(model)[:8]}-{cache_tag(settings)}"
        )
    settings.pop("rows", None)
    return write_cache(
        model, token_rows, labels, out, identity=identity, progress=progress, **settings
    )


def cache_tag(settings: dict) -> str:
    """The short hash that names a managed cache folder: of the extraction settings with
    every one not given filled in from :func:`write_cache`'s defaults, so the same features
    asked for with or without a default spelt out (``extract()``, ``probe``) share one
    folder. The batch size is left out: it does not change what is stored."""
    full = {**_WRITE_DEFAULTS, **settings}
    full.pop("batch_size", None)
    if full.get("layers") is not None:
        full["layers"] = sorted(set(full["layers"]))
    key = json.dumps(sorted(full.items()), default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:6]


_WRITE_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(write_cache).parameters.items()
    if p.kind is p.KEYWORD_ONLY and name not in ("identity", "overwrite", "progress")
}
