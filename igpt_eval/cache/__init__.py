"""Activation caches (docs/design.md): per-layer pooled features of a dataset split, on disk.

:func:`write_cache` runs a model over a ``[N, T]`` token array and writes, into one folder::

    manifest.json          what the cache holds and how far it got (replaced atomically;
                           its record is Manifest, :mod:`~igpt_eval.cache.manifest`)
    blocks.0.ln_1.npy      float32 (or float16) [N, d], one file per layer, named by site
    ...
    ln_f.npy               the last layer (the final norm) for the default site
    labels.npy             int64 [N]
    <site>.full.npy        optional: one layer's activations at every position [N, T, d]
    .lock                  held by the writing process (an fcntl lock; empty)

:class:`ActivationCache` opens such a folder: ``cache[layer]`` is a read-only memmap.
:func:`extract` (:mod:`~igpt_eval.cache.extraction`) is the one public entry point: a checkpoint
folder (or a model and its palette) and a dataset split in, the cache of that split out, built
or reused; it tokenizes the split and calls :func:`write_cache`. What a cache stores is an
:class:`ExtractSettings` (:mod:`~igpt_eval.cache.settings`), which both take.

**Resuming.** Rows are written in batches with fixed boundaries (``batch_size`` rows from row
0). After each batch the rows are flushed to disk, *then* ``rows_completed`` in the manifest
is advanced (write, fsync, rename), so the manifest never claims rows that are not on disk.
Re-running the same extraction after a crash or SIGKILL continues at the first uncommitted
batch and ends with arrays bit-equal to an unbroken run. An incomplete cache can only be
resumed with the batch size it was started with (a different size could change the last bits
of the features); anything else is refused, and ``overwrite=True`` starts again.

**BERT masks.** BERT models are read masked, as in training, and their features averaged over
``bert_masks`` masks. Row ``i``'s masks are a pure function of ``(seed, i)`` (see
:func:`row_masks`), independent of batch size, process count and resumption, so the features
of every row can be recomputed exactly on their own.

**Identity.** The manifest records the model's weights hash, the palette hash, the dataset
fingerprint and every extraction setting. A cache asked for with other inputs is refused
(``overwrite=True`` rebuilds it), never silently reused; a complete matching one is reused
without running the model.

**Memory.** Only one batch's rows of each file are mapped at a time (a fresh ``np.memmap``
window per batch, flushed and unmapped), so resident memory does not grow with ``N``; files
are preallocated when created, so a full disk fails up front rather than with SIGBUS later.

**Processes.** Under ``torchrun``, rank r computes batches ``b`` with ``b % world == r`` into
the same files; after each round of ``world`` batches all ranks meet at a barrier and rank 0
commits the round. Rank 0 creates the files and holds the lock.
"""

from importlib import import_module

# Each public name and the module that defines it, imported on first use: the light
# settings module (ExtractSettings) is read by the command line at start-up, before torch.
_HOME = {
    "FORMAT": "manifest",
    "ActivationCache": "reader",
    "CacheInputs": "manifest",
    "ExtractSettings": "settings",
    "Manifest": "manifest",
    "extract": "extraction",
    "extract_split": "extraction",
    "read_manifest": "manifest",
    "row_masks": "writer",
    "write_cache": "writer",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(import_module(f"igpt_eval.cache.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'igpt_eval.cache' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
