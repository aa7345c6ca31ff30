"""Writing activation caches: :func:`write_cache` (resumable, locked, sharded over ranks)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from igpt_eval.cache.manifest import (
    LABELS,
    LOCK,
    MANIFEST,
    CacheInputs,
    Manifest,
    mismatch,
    read_manifest,
)
from igpt_eval.cache.reader import ActivationCache
from igpt_eval.cache.request import COMPUTE, request
from igpt_eval.cache.settings import ExtractSettings
from igpt_eval.errors import IGPTError
from igpt_eval.io import file_hash, file_lock, save_npy, write_json
from igpt_eval.log import progress_bar
from igpt_eval.model.devices import (
    cpu_workers,
    default_extract_batch,
    one_thread_each,
    resolve_compute,
)
from igpt_eval.train import distributed as dist

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- masks
def row_masks(rows, seq_len: int, n_masks: int, seed: int, p: float = 0.15) -> torch.Tensor:
    """The BERT masks ``[n_masks, len(rows), seq_len]`` (bool) used for image rows ``rows``.

    Row i's masks are ``numpy.random.default_rng([seed, i]).random((n_masks, T)) < p``: a pure
    function of ``(seed, i)``, so they do not depend on the batch the row falls in, the number
    of processes, or where a run resumed. (A seed sequence rather than torch's generator, whose
    ``manual_seed`` keeps only 32 bits and so could not hold both numbers.)
    """
    if seed < 0:
        raise IGPTError(f"the mask seed must be >= 0, got {seed}")
    u = np.stack([np.random.default_rng([seed, int(r)]).random((n_masks, seq_len)) for r in rows])
    return torch.from_numpy(u < p).transpose(0, 1).reshape(n_masks, len(rows), seq_len)


# --------------------------------------------------------------------------- writing
def write_cache(
    model,
    tokens,
    labels,
    out: str | os.PathLike,
    settings: ExtractSettings | None = None,
    *,
    inputs: CacheInputs | None = None,
    overwrite: bool = False,
) -> ActivationCache:
    """Write (or resume, or reuse) the activation cache of ``model`` on ``tokens`` in ``out``.

    ``tokens`` is a ``[N, T]`` integer array or memmap (uint16 from a token cache), ``labels``
    ``[N]``. What is stored is ``settings`` (:class:`~igpt_eval.cache.settings.ExtractSettings`,
    default: its defaults): ``layers`` defaults to every layer of ``site``; features are
    pooled over positions in float32 and stored as ``dtype``. BERT models are read masked and
    averaged over ``bert_masks`` masks drawn by :func:`row_masks` from ``seed`` (0: unmasked);
    AR models use no masks. ``full_sequence_layer=L`` also stores layer L at every position,
    ``[N, T, d]`` in ``full_sequence_dtype``. ``compute`` is the precision of the forward
    pass: ``float32``, or ``bfloat16`` autocast (about twice as fast on CPUs with bf16 units;
    pooling still accumulates in float32); ``auto`` is bf16 on a GPU and float32 on the CPU.
    ``batch_size`` defaults to the device's
    (:func:`igpt_eval.model.devices.default_extract_batch`).

    Before a new cache's files are created, the disk they need is compared with the free
    space there: too little is one :class:`IGPTError` and nothing is written.

    ``inputs`` (:class:`~igpt_eval.cache.manifest.CacheInputs`) names what the features come
    from for the manifest: the model, its weights' hash (default:
    :func:`~igpt_eval.model.loading.state_dict_hash`), palette, dataset, split and dataset
    fingerprint (default: a hash of tokens and labels).
    Returns the opened cache. See the module docstring for resumption and reuse rules.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise IGPTError(f"{out} exists and is not a folder")
    settings = settings or ExtractSettings()
    settings = settings.replace(compute=resolve_compute(settings.compute, model.device))
    if settings.batch_size is None:
        settings = settings.replace(batch_size=default_extract_batch(model.device))
    req = request(model, tokens, labels, settings, inputs or CacheInputs())
    main = dist.is_main()
    lock = file_lock(out / LOCK, wait=False, what=f"the activation cache {out}")
    with lock if main else contextlib.nullcontext():
        try:
            if main:
                m = _prepare(out, req, np.asarray(labels), overwrite)
            dist.barrier()  # the files exist before any other rank opens them
            if not main:
                m = Manifest.from_json(read_manifest(out), out)
            if not m.complete:
                _fill(model, tokens, out, m)
                if main:
                    _finish(out, m)
                dist.barrier()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            done = (read_manifest(out) or {}).get("rows_completed", 0)
            raise IGPTError(
                f"disk full while writing {out} ({done} of {req.n} rows saved); free some "
                "space and rerun the same command to continue"
            ) from None
    return ActivationCache.open(out)


def _prepare(out: Path, req: Manifest, labels: np.ndarray, overwrite: bool) -> Manifest:
    """Under the lock: the manifest to continue from, creating the cache when needed."""
    try:
        written = read_manifest(out)
        why = None if written is None else mismatch(written, req)
        # Its record, when it is one this version reads (a matching one always is).
        old = None if written is None or why else Manifest.from_json(written, out)
    except IGPTError:
        if not overwrite:
            raise
        written = old = why = None
    if written is not None:
        if why is not None and not overwrite:
            raise IGPTError(f"{out} holds activations {why}; pass --rebuild-cache to rebuild it")
        if why is None and old.complete:
            try:
                ActivationCache.open(out)  # shapes and sizes, not checksums: cheap
                return old
            except IGPTError:
                if not overwrite:
                    raise
        elif why is None and old.batch_size != req.batch_size and not overwrite:
            raise IGPTError(
                f"{out} holds an incomplete cache ({old.rows_completed}/{old.n} rows) "
                f"written with batch size {old.batch_size}; rerun with --batch-size "
                f"{old.batch_size} to resume it, or pass --rebuild-cache to start again"
            )
        elif why is None and _files_ok(out, old):
            return old  # resume from old.rows_completed
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        if not overwrite:
            raise IGPTError(
                f"{out} holds other files and no activation cache; choose an empty --out "
                "or pass --rebuild-cache"
            )
    check_disk(out, req)
    return _create(out, req, labels, written)


def cache_bytes(m: Manifest) -> int:
    """Bytes a cache's data files take on disk (the pooled layers, the full-sequence layer,
    the labels), from its manifest or request."""
    per = np.dtype(m.dtype).itemsize * m.n * m.dim
    total = per * len(m.sites) + 8 * m.n
    if m.full_sequence:
        fs = m.full_sequence
        total += np.dtype(fs.dtype).itemsize * int(np.prod(fs.shape))
    return int(total)


def check_disk(out: Path, req: Manifest) -> None:
    """Log what a new cache will take and refuse it (one :class:`IGPTError`, nothing
    written) when the file system under ``out`` has less free space than that."""
    need = cache_bytes(req)
    where = next(p for p in (out, *out.parents) if p.exists())
    free = shutil.disk_usage(where).free
    what = (
        f"{req.n:,} images x {len(req.sites)} sites x {req.dim} {req.dtype} = "
        f"{_gb(need)} on disk, {_gb(free)} free"
    )
    if need > free:
        raise IGPTError(
            f"the activation cache {out} needs {what}; free some space, store float16 "
            "(--cache-dtype float16), or cache fewer --layers"
        )
    log.info("[extract] %s: %s", out, what)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _files_ok(out: Path, m: Manifest) -> bool:
    try:
        ActivationCache(out, m)
        return True
    except IGPTError:
        return False


def _create(out: Path, req: Manifest, labels: np.ndarray, old: dict | None) -> Manifest:
    """Start a new cache: manifest first (0 rows), then preallocated files; the files of the
    cache it replaces (``old``, its manifest as written) that this one does not reuse go."""
    out.mkdir(parents=True, exist_ok=True)
    m = dataclasses.replace(req, created=datetime.now(UTC).isoformat(timespec="seconds"))
    # The manifest lands first, so a kill from here on leaves a cache that reads as
    # "0 rows done" (rerun resumes) rather than a folder of unexplained files.
    write_json(out / MANIFEST, m.to_json())
    for name in _old_files(old) - set(m.data_files()):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / name)
    for name in m.sites:
        _allocate(out / m.files[name], m.dtype, (m.n, m.dim))
    if m.full_sequence:
        fs = m.full_sequence
        _allocate(out / fs.file, fs.dtype, tuple(fs.shape))
    save_npy(out / LABELS, labels.astype(np.int64))
    return m


def _old_files(old: dict | None) -> set[str]:
    """The data files a manifest as written names (none when it names them in no way this
    version reads: those are left alone)."""
    files = (old or {}).get("files")
    if not isinstance(files, dict):
        return set()
    names = set(map(str, files.values())) | {LABELS}
    fs = old.get("full_sequence")
    if isinstance(fs, dict) and isinstance(fs.get("file"), str):
        names.add(fs["file"])
    return names


def _allocate(path: Path, dtype: str, shape: tuple) -> None:
    """Create a ``.npy`` of ``shape`` through ``open_memmap`` and reserve its disk blocks."""
    mm = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = mm.offset + mm.nbytes
    del mm
    # A sparse file would meet a full disk only when a page is written back, as SIGBUS;
    # reserving the blocks now turns that into an ENOSPC here.
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            # The file system cannot preallocate (EINVAL/EOPNOTSUPP): stay sparse.


class _Rows:
    """Writes row ranges of one ``.npy`` through a memmap window covering just those rows."""

    def __init__(self, path: Path):
        a = np.load(path, mmap_mode="r")
        self.path, self.dtype, self.row_shape = path, a.dtype, a.shape[1:]
        self.offset, self.row_bytes = a.offset, a.itemsize * int(np.prod(a.shape[1:]))
        del a

    def write(self, start: int, rows: np.ndarray) -> None:
        mm = np.memmap(
            self.path, self.dtype, "r+", offset=self.offset + start * self.row_bytes,
            shape=(len(rows), *self.row_shape),
        )  # fmt: skip
        mm[:] = rows
        mm.flush()
        del mm  # unmapped: resident memory stays one batch, whatever N is


def _batch(model, tokens: np.ndarray, row0: int, m: Manifest) -> list[np.ndarray]:
    """Features of one batch, in the order of :func:`data_files` (labels excluded)."""
    x = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    B, T = x.shape
    masks = [None]
    if m.bert_masks:
        p = model.config.mask_prob
        masks = list(row_masks(range(row0, row0 + B), T, m.bert_masks, m.seed, p))
    layers, fs = m.layers, m.full_sequence
    # One forward per mask for the pooled layers, and one more up to the full-sequence layer:
    # pooled features stay exactly what model.features gives. n_masks=0: the masks are ours
    # (with bert_masks=0, a BERT model is read unmasked rather than with a fresh mask).
    ac = COMPUTE[m.compute]
    pooled = [model.features(x, layers, m.site, mask=mk, n_masks=0, autocast=ac) for mk in masks]
    pooled = (sum(pooled) / len(masks)).cpu().numpy()  # (n_layers, B, d), as features() averages
    outs = [pooled[i].astype(m.dtype) for i in range(len(layers))]
    if fs:
        full = [
            model.features(x, [fs.layer], m.site, pool=False, mask=mk, n_masks=0, autocast=ac)[0]
            for mk in masks
        ]
        outs.append((sum(full) / len(masks)).cpu().numpy().astype(fs.dtype))  # (B, T, d)
    return outs


def _fill(model, tokens, out: Path, m: Manifest) -> None:
    """Compute every uncommitted batch (this rank's share, ``cpu_workers`` batches at a
    time) and commit round by round, in row order: a cache killed mid-round resumes from
    the last commit."""
    n, B = m.n, m.batch_size
    world, rank, main = dist.world_size(), dist.rank(), dist.is_main()
    writers = [_Rows(out / name) for name in m.data_files()[:-1]]
    n_batches = -(-n // B)
    start = -(-m.rows_completed // B)  # rows_completed is a multiple of B, or n
    W = cpu_workers(model.device)
    per_round = world * W  # each rank takes W consecutive batches of a round

    def compute(b: int) -> tuple[int, list[np.ndarray]]:
        lo, hi = b * B, min(n, (b + 1) * B)
        return lo, _batch(model, tokens[lo:hi], lo, m)

    desc = f"extract {m.dataset or ''}/{m.split or ''}".rstrip("/")
    with (
        progress_bar(total=n, initial=min(n, start * B), desc=desc, unit="img") as bar,
        one_thread_each(W) as pool,
    ):
        for first in range(start, n_batches, per_round):
            mine = [b for b in range(first + rank * W, first + (rank + 1) * W) if b < n_batches]
            for lo, outs in pool.map(compute, mine) if pool else map(compute, mine):
                for w, rows in zip(writers, outs, strict=True):
                    w.write(lo, rows)
            dist.barrier()  # every rank's rows of this round are on disk
            done = min(n, (first + per_round) * B)
            if main:
                m.rows_completed = done
                write_json(out / MANIFEST, m.to_json())
            bar.update(done - bar.n)


def _finish(out: Path, m: Manifest) -> None:
    """Checksum every file once, then mark the cache complete."""
    m.rows_completed = m.n
    m.checksums = {name: file_hash(out / name) for name in m.data_files()}
    m.complete = True
    m.finished = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(out / MANIFEST, m.to_json())
