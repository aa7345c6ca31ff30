"""Small file helpers shared by every stage: atomic writes and content hashes.

Every file the toolkit writes that a later stage trusts (manifests, checkpoints, palettes) goes
through :func:`atomic_write`, so a crash or a kill mid-write leaves the previous version in
place rather than a half-written file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from igpt_eval.errors import IGPTError


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); the result gets the mode any new file
        # would, so colleagues sharing a machine can read results as the umask allows.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # fsync the directory so the rename itself survives a power loss.
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _umask() -> int:
    """The process's umask (read by setting it and back: POSIX has no plain getter)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def read_json(path: str | os.PathLike, hint: str = "") -> Any:
    """Parse a JSON file. A corrupt one is one :class:`~igpt_eval.errors.IGPTError` line
    naming it (plus ``hint``, what to do about it); a missing one raises
    ``FileNotFoundError``, for the caller to word."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IGPTError(f"{path} is not valid JSON ({e}){hint}") from None


def split_record(cls, d: dict, derived=(), held=("extra",)) -> tuple[dict, dict]:
    """``(fields, extra)`` of the JSON object ``d`` for the record dataclass ``cls``: the
    keys that are ``cls``'s fields (but those in ``held``, which the record fills itself),
    and the keys it does not know, kept so that a record written by a later version survives
    a read and a write here. Keys in ``derived`` (recomputed by the record) are neither."""
    names = {f.name for f in dataclasses.fields(cls)} - set(held)
    skip = names | set(held) | set(derived)
    return {k: v for k, v in d.items() if k in names}, {k: v for k, v in d.items() if k not in skip}


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_write` (no pickles: ``allow_pickle=False``)."""
    with atomic_write(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def array_hash(array: np.ndarray) -> str:
    """SHA-256 (hex, first 16 chars) of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes() if a.size == 0 else memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def file_hash(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex, first 16 chars) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True, what: str = "this folder"):
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the block.

    ``wait=False`` raises a one-line :class:`~igpt_eval.errors.IGPTError` when another
    process holds it. The kernel drops the lock when its holder dies, so a killed writer
    never leaves a stale lock behind.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise IGPTError(
                f"another igpt-eval process is writing {what}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
