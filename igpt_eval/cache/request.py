"""What an activation cache is asked for: :func:`request` checks the inputs and settings
:func:`~igpt_eval.cache.writer.write_cache` is given, each wrong one a single clear line,
and returns the :class:`~igpt_eval.cache.manifest.Manifest` that calls for (0 rows done),
which an existing cache must match to be reused."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from igpt_eval.cache.manifest import DTYPES, HUB_KEYS, CacheInputs, FullSequence, Manifest, masking
from igpt_eval.cache.settings import ExtractSettings
from igpt_eval.errors import IGPTError
from igpt_eval.io import array_hash
from igpt_eval.model.loading import state_dict_hash
from igpt_eval.model.sites import check_kind, check_layers, site_name, valid_layers
from igpt_eval.train import distributed as dist

# Forward-pass precision -> the autocast dtype handed to IGPT.features.
COMPUTE = {"float32": None, "bfloat16": torch.bfloat16}


def request(model, tokens, labels, settings: ExtractSettings, inputs: CacheInputs) -> Manifest:
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
    if cfg.objective == "bert" and bert_masks < 0:
        raise IGPTError(f"bert_masks must be >= 0, got {bert_masks}")
    full = None
    if full_layer is not None:
        (full_layer,) = check_layers([full_layer], site, L)
        name = site_name(full_layer, site, L)
        full = FullSequence(full_layer, name, f"{name}.full.npy", full_dtype, [n, T, cfg.n_embd])
    sd_hash = state_dict_hash(model)
    fingerprint = inputs.dataset_fingerprint
    if not fingerprint:
        both = array_hash(np.asarray(tokens)) + array_hash(np.asarray(labels))
        fingerprint = hashlib.sha256(both.encode()).hexdigest()[:16]
    return Manifest(
        model=inputs.model,
        objective=cfg.objective,
        model_config=cfg.to_dict(),
        weights_hash=inputs.weights_hash or sd_hash,
        state_dict_hash=sd_hash,
        palette_hash=inputs.palette_hash,
        dataset=inputs.dataset,
        split=inputs.split,
        dataset_fingerprint=fingerprint,
        site=site,
        layers=layers,
        sites=[site_name(layer, site, L) for layer in layers],
        dtype=dtype,
        n=n,
        seq_len=T,
        dim=cfg.n_embd,
        batch_size=batch_size,
        **masking(cfg.objective, bert_masks, settings.seed),
        full_sequence=full,
        compute=compute,
        world_size=dist.world_size(),
        hub={k: inputs.hub[k] for k in HUB_KEYS if inputs.hub.get(k)},
    )
