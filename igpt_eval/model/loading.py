"""Opening a model for use: the network, its palette and its identity.

:func:`open_model` takes a model named any way :func:`~igpt_eval.model.sources.resolve_model`
takes (or an in-memory :class:`~igpt_eval.model.igpt.IGPT`) and returns what every stage that
runs one needs: the network on its device, the palette its tokens come from, and the identity
that caches and results record (:class:`~igpt_eval.model.sources.ModelIdentity`: name,
weights hash, the run that trained it, and so the dataset and split seed it is read on).
:func:`state_dict_hash` is the weights' identity however they were loaded.
"""

from __future__ import annotations

import hashlib
import os

import torch

from igpt_eval.errors import IGPTError
from igpt_eval.model.devices import resolve_device
from igpt_eval.model.igpt import IGPT
from igpt_eval.model.sources import ModelIdentity, ModelSource, load_source, resolve_model


def open_model(model, palette=None, device="cpu", *, random_weights: bool = False):
    """``(IGPT, Palette, identity)`` for a model named any way
    :func:`igpt_eval.model.sources.resolve_model` takes (a checkpoint folder, a Hugging Face
    ImageGPT folder, ``hf:OWNER/NAME[@REVISION]``), or an in-memory model.

    ``identity`` (a :class:`~igpt_eval.model.sources.ModelIdentity`) holds the model's name,
    its weight files' hash, the Hub repository and commit when it came from there, and the
    record of the run that trained it (``run.json``) when there is one. ``random_weights``
    replaces the weights by the initialisation its run started from
    (:meth:`IGPT.initialised` with the run's seed, 0 for a model not trained here): the same
    architecture, untrained, the control every probe result should beat.
    """
    device = resolve_device(device)
    if isinstance(model, str | os.PathLike | ModelSource):
        source = resolve_model(model)
        loaded, own_palette, ident = load_source(source, device)
        if palette is None:
            palette = own_palette
            if palette is None:
                where = "palette.npy" if source.is_checkpoint else "preprocessor_config.json"
                raise IGPTError(f"{source.spec} has no {where}; the model's colours are unknown")
        model = loaded
        if random_weights:
            seed = ident.run.seed
            model = IGPT.initialised(loaded.config, seed).to(device).eval()
            ident.model = f"{source.spec} (random weights, seed {seed})"
            ident.weights_hash = f"init-{seed}-{state_dict_hash(model)}"
    else:
        if random_weights:
            raise IGPTError("random_weights needs a model folder or Hub name (its config)")
        model = model.to(device).eval()
        ident = ModelIdentity(f"IGPT({model.config.objective}, {model.n_params():,} params)")
    if palette is None:
        raise IGPTError("give the palette the model was trained with (palette=...)")
    model.config.check_palette(palette)
    return model, palette, ident


def state_dict_hash(model: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex) of a model's parameters: names, dtypes, shapes and bytes.

    Unlike the checkpoint file's hash this is the same however the weights were loaded, so a
    cache made from ``load_model(dir)`` in a notebook is recognised by the CLI and vice versa.
    """
    state = model.state_dict()
    # Memoised on the model while no tensor changed (a tensor's version counter moves on
    # every in-place write): extraction asks once per split, and iGPT-L is 5 GB to hash.
    key = tuple(
        (name, t.data_ptr(), str(t.device), t._version) for name, t in sorted(state.items())
    )
    memo = getattr(model, "_igpt_state_hash", None)
    if memo is not None and memo[0] == key:
        return memo[1]
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    digest = h.hexdigest()[:16]
    object.__setattr__(model, "_igpt_state_hash", (key, digest))
    return digest
