"""Reading activation caches: :class:`ActivationCache` (its record is
:class:`~igpt_eval.cache.manifest.Manifest`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from igpt_eval.cache.manifest import FORMAT, LABELS, Manifest, read_manifest
from igpt_eval.errors import IGPTError
from igpt_eval.io import file_hash


def open_npy(path: Path, shape: tuple, dtype: str) -> np.memmap:
    """A read-only memmap of ``path``, checked against the shape and dtype it should have."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise IGPTError(f"{path} is missing; rebuild the cache with --rebuild-cache") from None
    except (OSError, ValueError, EOFError) as e:
        raise IGPTError(
            f"{path} is truncated or damaged ({e}); rebuild the cache with --rebuild-cache"
        ) from None
    if a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
        raise IGPTError(
            f"{path} holds {a.dtype} {list(a.shape)}, the manifest says {dtype} {list(shape)}; "
            "rebuild the cache with --rebuild-cache"
        )
    return a


class ActivationCache:
    """An activation cache on disk (see the module docstring), opened for reading.

    ``cache[layer]`` (an int, or a site name like ``'blocks.3.ln_1'``) is a read-only memmap
    ``[n, dim]``; iterating gives ``(layer, array)`` pairs and ``len(cache)`` is the number of
    layers. An incomplete cache shows only its committed rows.
    """

    def __init__(self, path: Path, manifest: Manifest):
        self.path, self.manifest = Path(path), manifest
        m, rows = manifest, manifest.rows_completed
        self._arrays = {
            layer: open_npy(self.path / m.files[s], (m.n, m.dim), m.dtype)[:rows]
            for layer, s in zip(m.layers, m.sites, strict=True)
        }
        self._names = dict(zip(m.sites, m.layers, strict=True))
        self.labels = open_npy(self.path / LABELS, (m.n,), "int64")[:rows]
        fs = m.full_sequence
        self.full_sequence = (
            open_npy(self.path / fs.file, fs.shape, fs.dtype)[:rows] if fs else None
        )

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = False) -> ActivationCache:
        """Open the cache in ``path`` (complete or not); ``verify=True`` also checks every
        file against its checksum. Any missing, truncated or altered file is an IGPTError."""
        path = Path(path)
        m = read_manifest(path)
        if m is None or m.get("format") != FORMAT:
            raise IGPTError(f"no activation cache in {path}; build one with `igpt-eval extract`")
        cache = cls(path, Manifest.from_json(m, path))
        if verify:
            cache.verify()
        return cache

    # ---------------------------------------------------------------- properties
    @property
    def layers(self) -> list[int]:
        return list(self.manifest.layers)

    @property
    def site(self) -> str:
        """The site kind (``ln_1``, ``resid_pre``, ...)."""
        return self.manifest.site

    @property
    def sites(self) -> list[str]:
        """The site name of each layer (``blocks.0.ln_1``, ..., ``ln_f``)."""
        return list(self.manifest.sites)

    @property
    def n(self) -> int:
        """Rows readable now (all ``N`` images once complete)."""
        return self.manifest.rows_completed

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def complete(self) -> bool:
        return self.manifest.complete is True

    @property
    def full_sequence_layer(self) -> int | None:
        fs = self.manifest.full_sequence
        return fs.layer if fs else None

    # ---------------------------------------------------------------- mapping
    def __getitem__(self, key) -> np.ndarray:
        layer = self._names.get(key, key) if isinstance(key, str) else key
        if layer not in self._arrays:
            raise IGPTError(
                f"layer {key!r} is not in the cache {self.path}; it holds layers "
                f"{_span(self.layers)} (sites {', '.join(self.sites)})"
            )
        return self._arrays[layer]

    def __contains__(self, key) -> bool:
        return key in self._arrays or key in self._names

    def __len__(self) -> int:
        return len(self._arrays)

    def __iter__(self):
        return iter(self._arrays.items())

    def __repr__(self) -> str:
        m = self.manifest
        status = "complete" if self.complete else f"incomplete, {self.n}/{m.n} rows"
        return (
            f"ActivationCache({str(self.path)!r}, model={m.model}, "
            f"split={m.split}, n={m.n}, d={self.dim}, layers {_span(self.layers)} "
            f"@ {self.site}, {m.dtype}, {status})"
        )

    def verify(self) -> list[str]:
        """Check every file against the checksum recorded when the cache was finished.

        Returns the names checked; raises IGPTError naming the first file that differs (or if
        the cache is not finished, so has no checksums yet).
        """
        if not self.complete:
            raise IGPTError(
                f"{self.path} is incomplete ({self.n}/{self.manifest.n} rows) and has no "
                "checksums yet; rerun the extraction to finish it"
            )
        sums = self.manifest.checksums
        for name, want in sums.items():
            if file_hash(self.path / name) != want:
                raise IGPTError(
                    f"{self.path / name} does not match its checksum (changed after "
                    "extraction); rebuild the cache with --rebuild-cache"
                )
        return list(sums)


def _span(layers: list[int]) -> str:
    """``0..8`` for a contiguous run of layers, else ``0,4,8``."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]}"
    return ",".join(map(str, layers))
