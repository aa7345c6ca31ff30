"""The record of an activation cache: :class:`Manifest`, what ``manifest.json`` holds.

A manifest names the inputs (weights hash, palette hash, dataset fingerprint), every
extraction setting, the files, and how far the extraction got. It is written with
:meth:`Manifest.to_json` and read with :meth:`Manifest.from_json`, which refuses a file of
another format or version with one line. :func:`mismatch` says why a cache on disk cannot
serve a request (``None`` when it can): a cache is reused only when every field of
``IDENTITY`` matches, never silently otherwise (docs/design.md, "Activation cache").

A light module (no torch): the command line and the readers use it without a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from igpt_eval.errors import IGPTError
from igpt_eval.io import split_record

FORMAT = "igpt-eval-activations"
VERSION = 1
MANIFEST, LABELS, LOCK = "manifest.json", "labels.npy", ".lock"
DTYPES = ("float32", "float16")
MASK_SCHEME = "per row i: numpy.random.default_rng([seed, i]).random((n_masks, T)) < mask_prob"
POOLING = "mean"  # every pooled layer is the mean over positions
HUB_KEYS = ("repo", "revision", "commit")  # where Hub weights came from (absent otherwise)

# Manifest fields a cache must share with the request to be reused (label for messages).
IDENTITY = {
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


@dataclass(frozen=True)
class CacheInputs:
    """What a cache's features are computed from, as its manifest names them. Every field is
    optional: :func:`~igpt_eval.cache.writer.write_cache` hashes the weights (and the tokens
    with the labels, for the fingerprint) when they are not given."""

    model: str | None = None  # a name for people
    weights_hash: str | None = None  # the checkpoint file's hash (default: the state dict's)
    palette_hash: str | None = None
    dataset: str | None = None
    split: str | None = None  # "test", or how a sample was drawn from it
    dataset_fingerprint: str | None = None  # of the images (default: of tokens and labels)
    hub: dict = field(default_factory=dict)  # repo, revision, commit of Hub weights


@dataclass(frozen=True)
class FullSequence:
    """One layer kept at every position: ``file`` holds ``shape = [N, T, d]`` of ``dtype``."""

    layer: int
    site: str
    file: str
    dtype: str
    shape: list[int]


@dataclass
class Manifest:
    """What an activation cache holds and how far its extraction got."""

    # --- the inputs
    model: str | None  # a name for people; the hashes below identify the inputs
    objective: str  # "ar" or "bert"
    model_config: dict  # the IGPTConfig, as config.json holds it
    weights_hash: str  # the checkpoint file's hash (else the state dict's)
    state_dict_hash: str  # the parameters' hash, however they were loaded
    palette_hash: str | None
    dataset: str | None
    split: str | None  # "test", or how a sample was drawn from it
    dataset_fingerprint: str  # of the images (or of the tokens and labels given)
    # --- what was extracted, and how
    site: str  # the site kind: ln_1, resid_pre, ...
    layers: list[int]
    sites: list[str]  # each layer's site name, and the stem of its file
    dtype: str  # of the stored features
    n: int  # images
    seq_len: int
    dim: int
    batch_size: int  # fixed batch boundaries: a resumed cache keeps them
    bert_masks: int = 0  # masks averaged per image (BERT models; AR: 0)
    seed: int | None = None  # the masks' seed (None: unmasked)
    mask_scheme: str | None = None
    full_sequence: FullSequence | None = None
    compute: str = "float32"  # forward precision: float32 or bfloat16 autocast
    world_size: int = 1  # processes that wrote it
    hub: dict = field(default_factory=dict)  # repo, revision, commit of Hub weights
    # --- progress
    rows_completed: int = 0  # rows on disk, committed after they were flushed
    complete: bool = False
    checksums: dict = field(default_factory=dict)  # file name -> sha256, once complete
    created: str | None = None
    finished: str | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as read

    @property
    def files(self) -> dict[str, str]:
        """Each pooled layer's file, by site name."""
        return {s: f"{s}.npy" for s in self.sites}

    def data_files(self) -> list[str]:
        """Every data file of the cache, in a fixed order (layers, full sequence, labels)."""
        names = [self.files[s] for s in self.sites]
        if self.full_sequence is not None:
            names.append(self.full_sequence.file)
        return [*names, LABELS]

    def to_json(self) -> dict:
        """The ``manifest.json`` object."""
        d = dataclasses.asdict(self)
        hub, extra = d.pop("hub"), d.pop("extra")
        d.update(format=FORMAT, version=VERSION, files=self.files, pooling=POOLING)
        d.update(shape=[self.n, self.dim], **{k: hub[k] for k in HUB_KEYS if hub.get(k)})
        for key in ("created", "finished"):
            if d[key] is None:
                del d[key]
        return {**extra, **d}

    @classmethod
    def from_json(cls, d: dict, where: str | os.PathLike = "the manifest") -> Manifest:
        """The manifest of a ``manifest.json`` object; one :class:`IGPTError` for another
        format or version, or a record that is not a manifest."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            kind = d.get("format") if isinstance(d, dict) else None
            raise IGPTError(f"{where} is not an activation cache's ({kind!r})")
        if d.get("version") != VERSION:
            raise IGPTError(
                f"{where} is an activation cache of version {d.get('version')}; this "
                f"igpt-eval reads version {VERSION} (rebuild with --rebuild-cache)"
            )
        derived = ("format", "version", "files", "pooling", "shape", *HUB_KEYS)
        kw, extra = split_record(cls, d, derived, held=("hub", "extra"))
        kw.update(hub={k: d[k] for k in HUB_KEYS if d.get(k)}, extra=extra)
        if kw.get("full_sequence") is not None:
            kw["full_sequence"] = FullSequence(**kw["full_sequence"])
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]  # fmt: skip
        missing = [name for name in required if name not in kw]
        if missing:  # written by something else
            raise IGPTError(
                f"{where} is corrupt (no {', '.join(missing)}); rebuild the cache with "
                "--rebuild-cache"
            )
        return cls(**kw)


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The folder's ``manifest.json`` as written (any format), None when there is none;
    unreadable → one :class:`IGPTError`."""
    f = Path(path) / MANIFEST
    try:
        m = json.loads(f.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise IGPTError(f"{f} is corrupt ({e}); rebuild the cache with --rebuild-cache") from None
    if not isinstance(m, dict):
        raise IGPTError(
            f"{f} is corrupt (not a JSON object); rebuild the cache with --rebuild-cache"
        )
    return m


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


def mismatch(old: dict, req: Manifest) -> str | None:
    """Why the cache whose ``manifest.json`` holds ``old`` cannot serve ``req`` (None when it
    can). Compared as written on disk, so a file of another kind or version is named."""
    if old.get("format") != FORMAT:
        return f"of another kind ({old.get('format')!r}, not activations)"
    if old.get("version") != VERSION:
        return f"in format version {old.get('version')} (this igpt-eval writes {VERSION})"
    new = req.to_json()
    for key, label in IDENTITY.items():
        was, asked = old.get(key), new[key]
        if key == "palette_hash" and (was is None or asked is None):
            continue  # not recorded on one side: nothing to compare
        if was != asked:
            return f"for another {label}: {was} (asked for {asked})"
    return None
