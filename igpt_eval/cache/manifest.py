"""What an activation cache is asked for, and whether an existing one can serve it.

:func:`request` validates what :func:`~igpt_eval.cache.writer.write_cache` is asked for and
returns the manifest that calls for: the inputs' identity (weights hash, palette hash, dataset
fingerprint) and every extraction setting. :func:`mismatch` says why a cache on disk cannot
serve a request (``None`` when it can): a cache is reused only when every field of
``_IDENTITY`` matches, never silently otherwise (docs/design.md, "Activation cache").
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from igpt_eval.cache.reader import DTYPES, FORMAT, VERSION
from igpt_eval.cache.settings import ExtractSettings
from igpt_eval.errors import IGPTError
from igpt_eval.io import array_hash
from igpt_eval.model.loading import state_dict_hash
from igpt_eval.model.sites import check_kind, check_layers, site_name, valid_layers
from igpt_eval.train import distributed as dist

MASK_SCHEME = "per row i: numpy.random.default_rng([seed, i]).random((n_masks, T)) < mask_prob"

# Forward-pass precision -> the autocast dtype handed to IGPT.features.
COMPUTE = {"float32": None, "bfloat16": torch.bfloat16}

# Manifest fields a cache must share with the request to be reused (label for messages).
_IDENTITY = {
    "state_dict_hash": "model weights",
    "palette_hash": "palette",
    "dataset_fingerprint": "dataset fingerprint",
    "n": "number of images",
    "seq_len": "sequence length",
    "site": "site",
    "layers": "layers",
    "dtype": "dtype",
    "bert_masks": "number of BERT masks",
    "seed": "mask seed",
    "full_sequence": "full-sequence layer",
    "compute": "compute precision",
}


def masking(objective: str, bert_masks: int, seed: int | None) -> dict:
    """The manifest's masking fields for a model of ``objective``: AR models are read
    unmasked, so neither the mask count nor its seed applies to them (one rule for the
    writer and for anything that looks a cache up by its settings)."""
    masked = objective == "bert" and bert_masks > 0
    return {
        "bert_masks": bert_masks if objective == "bert" else 0,
        "seed": seed if masked else None,
        "mask_scheme": MASK_SCHEME if masked else None,
    }


def request(model, tokens, labels, settings: ExtractSettings, identity: dict | None) -> dict:
    """Validate what :func:`write_cache` is asked for (``settings`` with the compute
    precision and batch size resolved); the manifest that calls for."""
    layers, site, dtype = settings.layers, settings.site, settings.dtype
    full_layer, full_dtype = settings.full_sequence_layer, settings.full_sequence_dtype
    batch_size, compute, bert_masks = settings.batch_size, settings.compute, settings.bert_masks
    cfg, L = model.config, model.config.n_layer
    check_kind(site)
    layers = check_layers(valid_layers(site, L) if layers is None else list(layers), site, L)
    for name, value in (("dtype", dtype), ("full-sequence dtype", full_dtype)):
        if value not in DTYPES:
            raise IGPTError(f"unknown {name} {value!r}; choose one of {', '.join(DTYPES)}")
    if batch_size < 1:
        raise IGPTError(f"batch size must be >= 1, got {batch_size}")
    if compute not in COMPUTE:
        raise IGPTError(f"unknown compute precision {compute!r}; choose one of {COMPUTE}")
    shape = getattr(tokens, "shape", ())
    if len(shape) != 2 or not np.issubdtype(np.asarray(tokens[:0]).dtype, np.integer):
        raise IGPTError(f"tokens must be an integer array [N, T], got shape {list(shape)}")
    n, T = shape
    if n == 0:
        raise IGPTError("no images to extract: the split is empty")
    if T != cfg.n_positions:
        raise IGPTError(
            f"tokens have {T} positions but the model reads {cfg.n_px}x{cfg.n_px} = "
            f"{cfg.n_positions}; tokenise the data at the model's n_px"
        )
    if np.shape(labels) != (n,):
        raise IGPTError(f"labels have shape {list(np.shape(labels))}, expected [{n}]")
    bert = cfg.objective == "bert"
    if bert and bert_masks < 0:
        raise IGPTError(f"bert_masks must be >= 0, got {bert_masks}")
    full = None
    if full_layer is not None:
        (full_layer,) = check_layers([full_layer], site, L)
        name = site_name(full_layer, site, L)
        full = {"layer": full_layer, "site": name, "file": f"{name}.full.npy",
                "dtype": full_dtype, "shape": [n, T, cfg.n_embd]}  # fmt: skip
    ident = dict(identity or {})
    sd_hash = state_dict_hash(model)
    if not ident.get("dataset_fingerprint"):
        both = array_hash(np.asarray(tokens)) + array_hash(np.asarray(labels))
        ident["dataset_fingerprint"] = hashlib.sha256(both.encode()).hexdigest()[:16]
    sites = [site_name(layer, site, L) for layer in layers]
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": ident.get("model"),
        # Where the weights came from when it was the Hugging Face Hub (else absent).
        **{k: ident[k] for k in ("repo", "revision", "commit") if ident.get(k)},
        "objective": cfg.objective,
        "model_config": cfg.to_dict(),
        "weights_hash": ident.get("weights_hash") or sd_hash,
        "state_dict_hash": sd_hash,
        "palette_hash": ident.get("palette_hash"),
        "dataset": ident.get("dataset"),
        "split": ident.get("split"),
        "dataset_fingerprint": ident["dataset_fingerprint"],
        "site": site,
        "layers": layers,
        "sites": sites,
        "files": {s: f"{s}.npy" for s in sites},
        "pooling": "mean",
        "dtype": dtype,
        "n": n,
        "seq_len": T,
        "dim": cfg.n_embd,
        "shape": [n, cfg.n_embd],
        "batch_size": batch_size,
        **masking(cfg.objective, bert_masks, settings.seed),
        "full_sequence": full,
        "compute": compute,
        "world_size": dist.world_size(),
        "rows_completed": 0,
        "complete": False,
        "checksums": {},
    }


def mismatch(m: dict, req: dict) -> str | None:
    """Why the cache with manifest ``m`` cannot serve ``req`` (None when it can)."""
    if m.get("format") != FORMAT:
        return f"of another kind ({m.get('format')!r}, not activations)"
    if m.get("version") != VERSION:
        return f"in format version {m.get('version')} (this igpt-eval writes {VERSION})"
    for key, label in _IDENTITY.items():
        old, new = m.get(key), req[key]
        if key == "palette_hash" and (old is None or new is None):
            continue  # not recorded on one side: nothing to compare
        if old != new:
            return f"for another {label}: {old} (asked for {new})"
    return None
