"""Token caches: a dataset split encoded with a palette, on disk.

A cache is a folder with ``tokens.npy`` (uint16 ``[N, n_px*n_px]``, written through
``numpy.lib.format.open_memmap`` batch by batch), ``labels.npy`` (int64 ``[N]``) and
``manifest.json`` (palette hash, dataset fingerprint, shape, ``complete``). The manifest is
written atomically *last*, so a folder without a complete manifest is treated as absent. A
cache whose manifest does not match the palette and dataset it is asked for is rebuilt or
refused, never silently reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from igpt_eval import defaults
from igpt_eval.data.dataset import ImageDataset
from igpt_eval.data.palette import Palette
from igpt_eval.errors import IGPTError
from igpt_eval.io import file_lock, save_npy, split_record, write_json
from igpt_eval.log import progress_bar

MANIFEST, TOKENS, LABELS = "manifest.json", "tokens.npy", "labels.npy"
FORMAT = "igpt-eval-tokens"


@dataclass(frozen=True)
class TokenManifest:
    """What a token cache holds: which images, encoded with which palette."""

    palette_hash: str
    palette_k: int  # colours
    channels: int
    dataset: str  # the registry name
    split: str
    seed: int | None  # the train/val split's seed
    dataset_fingerprint: str
    classes: list[str]
    n_px: int
    n: int  # images
    created: str | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept

    def to_json(self) -> dict:
        """The ``manifest.json`` object (written last: ``complete`` is always true)."""
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        return {**extra, **d, "format": FORMAT, "version": 1, "dtype": "uint16", "complete": True}

    @classmethod
    def from_json(cls, d: dict) -> TokenManifest | None:
        """The manifest of a ``manifest.json`` object; None for anything but a complete
        token cache's (a folder without one is treated as absent)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("complete") is not True:
            return None
        kw, extra = split_record(cls, d, derived=("format", "version", "dtype", "complete"))
        try:
            return cls(**kw, extra=extra)
        except TypeError:  # a field missing: not one this version wrote
            return None


def read_manifest(path: str | os.PathLike) -> TokenManifest | None:
    """The cache's manifest if it is present, readable and complete; otherwise None."""
    try:
        with open(Path(path) / MANIFEST) as f:
            return TokenManifest.from_json(json.load(f))
    except (OSError, ValueError):
        return None


def _mismatch(m: TokenManifest, palette: Palette | None, fingerprint: str | None) -> str | None:
    """Why the manifest ``m`` does not fit the inputs (None when it does)."""
    if palette is not None and m.palette_hash != palette.hash:
        return f"palette {m.palette_hash} (asked for {palette.hash})"
    if fingerprint is not None and m.dataset_fingerprint != fingerprint:
        return f"dataset fingerprint {m.dataset_fingerprint} (asked for {fingerprint})"
    return None


@dataclass
class TokenCache:
    """An opened token cache: ``tokens`` is a read-only memmap, ``labels`` an array."""

    path: Path
    manifest: TokenManifest
    tokens: np.ndarray
    labels: np.ndarray

    @property
    def n_px(self) -> int:
        """Side length of the tokenised images."""
        return self.manifest.n_px

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        palette: Palette | None = None,
        fingerprint: str | None = None,
    ) -> TokenCache:
        """Open the cache at ``path``; with ``palette``/``fingerprint``, check it was built
        from them. Raises :class:`IGPTError` if it is absent, incomplete or mismatching."""
        path = Path(path)
        m = read_manifest(path)
        if m is None:
            raise IGPTError(
                f"no complete token cache in {path}; build it with `igpt-eval tokenize`"
            )
        why = _mismatch(m, palette, fingerprint)
        if why:
            raise IGPTError(f"token cache {path} was built for {why}; rebuild it with --overwrite")
        try:
            tokens = np.load(path / TOKENS, mmap_mode="r", allow_pickle=False)
            labels = np.load(path / LABELS, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise IGPTError(
                f"token cache {path} is damaged ({e}); rebuild it with --overwrite"
            ) from None
        shape = (m.n, m.n_px**2)
        if tokens.shape != shape or tokens.dtype != np.uint16 or labels.shape != (m.n,):
            raise IGPTError(
                f"token cache {path} does not match its manifest (tokens {tokens.shape}, "
                f"expected {shape}); rebuild it with --overwrite"
            )
        return cls(path=path, manifest=m, tokens=tokens, labels=labels)


def tokenize(
    dataset: ImageDataset,
    palette: Palette,
    out_dir: str | os.PathLike,
    batch_size: int = 4096,
    overwrite: bool = False,
) -> TokenCache:
    """Encode ``dataset`` with ``palette`` into a token cache at ``out_dir`` and open it.

    A complete cache already there for the same palette and dataset fingerprint is reused
    without recomputation. One built from other inputs is rebuilt when ``overwrite``, else
    refused with :class:`IGPTError`.
    """
    out = Path(out_dir)
    if dataset.n_px is None:
        h, w = dataset.images.shape[1:3]
        raise IGPTError(f"images are {h}x{w}; tokenizing needs square images, pass n_px")
    grey_to_rgb = dataset.channels == 1 and palette.channels == 3
    if dataset.channels != palette.channels and not grey_to_rgb:
        raise IGPTError(
            f"{dataset.name}'s images have {dataset.channels} channels but the palette has "
            f"{palette.channels}; a colour dataset needs an RGB palette (fit one on it with "
            "`igpt-eval palette`)"
        )
    if out.exists() and not out.is_dir():
        raise IGPTError(f"{out} exists and is not a folder")
    # Two processes asking for the same cache (e.g. two trainings started together): the
    # second waits for the first, then finds the finished cache and reuses it.
    with file_lock(out / ".lock", what=f"the token cache {out}"):
        return _tokenize_locked(dataset, palette, out, batch_size, overwrite)


def _tokenize_locked(dataset, palette, out: Path, batch_size, overwrite) -> TokenCache:
    m = read_manifest(out)
    if m is not None:
        why = _mismatch(m, palette, dataset.fingerprint)
        if why is None:
            with contextlib.suppress(IGPTError):  # damaged files: fall through and rebuild
                return TokenCache.open(out, palette, dataset.fingerprint)
        elif not overwrite:
            raise IGPTError(
                f"{out} holds a token cache built for {why}; pass --overwrite to rebuild it"
            )
    out.mkdir(parents=True, exist_ok=True)
    # Invalidate first: from here until the new manifest lands, the folder reads as absent.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out / MANIFEST)

    n, seq = len(dataset), dataset.n_px**2
    # Write beside the final name and rename, so a reader still mapping an old tokens.npy
    # keeps a valid file.
    tmp = out / f".{TOKENS}.tmp"
    mm = open_memmap(tmp, mode="w+", dtype=np.uint16, shape=(n, seq))
    with progress_bar(total=n, desc=f"tokenize {dataset.name}/{dataset.split}", unit="img") as bar:
        for start in range(0, n, batch_size):
            batch = dataset.images[start : start + batch_size]
            if dataset.channels == 1 and palette.channels == 3:  # grey in RGB: R = G = B
                batch = np.repeat(batch, 3, axis=-1)
            mm[start : start + len(batch)] = palette.encode(batch)
            bar.update(len(batch))
    mm.flush()
    del mm
    os.replace(tmp, out / TOKENS)
    save_npy(out / LABELS, dataset.labels.astype(np.int64))
    m = TokenManifest(
        palette_hash=palette.hash,
        palette_k=palette.k,
        channels=palette.channels,
        dataset=dataset.name,
        split=dataset.split,
        seed=dataset.seed,
        dataset_fingerprint=dataset.fingerprint,
        classes=list(dataset.classes),
        n_px=dataset.n_px,
        n=n,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_json(out / MANIFEST, m.to_json())
    return TokenCache.open(out, palette, dataset.fingerprint)


def cache_dir(root: str | os.PathLike, dataset: ImageDataset, palette: Palette) -> Path:
    """The folder for (dataset, palette) under a cache root:
    ``<root>/<name>-<split>[-s<seed>]-<n_px>px-<palette hash>`` (the seed only for train/val,
    the only splits it changes; characters unsafe in a file name become ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset.name).strip("_")
    seed = f"-s{dataset.seed}" if dataset.split in ("train", "val") else ""
    return Path(root) / f"{name}-{dataset.split}{seed}-{dataset.n_px}px-{palette.hash}"


def load_tokens(
    dataset: ImageDataset,
    palette: Palette,
    cache_root: str | os.PathLike | None = None,
    overwrite: bool = True,
    batch_size: int = 4096,
) -> TokenCache:
    """Tokens of ``dataset`` under ``palette`` from the cache root (default:
    :func:`igpt_eval.defaults.cache_root`'s ``tokens/``), building them if needed.

    A cache that exists but was built from other data (the dataset fingerprint changed) is
    rebuilt with a warning when ``overwrite`` (the default: the root is a managed cache),
    else refused with :class:`IGPTError`.
    """
    if cache_root is None:
        cache_root = defaults.cache_root() / "tokens"
    path = cache_dir(cache_root, dataset, palette)
    m = read_manifest(path)
    if m is not None and overwrite and _mismatch(m, palette, dataset.fingerprint):
        warnings.warn(
            f"token cache {path} is stale (the data changed); rebuilding it", stacklevel=2
        )
    return tokenize(dataset, palette, path, batch_size=batch_size, overwrite=overwrite)
