"""Dataset registry: maps a name to a function that reads it from disk.

Names are ``fashion-mnist``, ``cifar10``, ``cifar100``, ``stl10``, ``digits``, and the
path-carrying ``imagefolder:PATH`` and ``npz:PATH``. Nothing is downloaded: the named
datasets are looked up in ``data_dir`` when given, else in ``$IGPT_EVAL_DATA`` (if set) and
``./data``; Fashion-MNIST also in ``/usr/share/datasets/fashion-mnist``, where Debian's
``dataset-fashion-mnist`` package installs the full 70k images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from igpt_eval.data import formats
from igpt_eval.data.formats import Source
from igpt_eval.errors import IGPTError

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# A loader gets the folders to search and the target side (only image folders of mixed
# sizes need it early).
Loader = Callable[[list[Path], "int | None"], Source]


def _fashion(folders: list[Path], n_px: int | None) -> Source:
    # Also accept the sub-folder layouts people commonly download into.
    cands = []
    for f in folders:
        cands += [f, f / "fashion-mnist", f / "FashionMNIST" / "raw"]
    return formats.read_fashion_mnist([*cands, SYSTEM_FASHION_MNIST])


_REGISTRY: dict[str, Loader] = {
    "fashion-mnist": _fashion,
    "cifar10": lambda folders, n_px: formats.read_cifar10(folders),
    "cifar100": lambda folders, n_px: formats.read_cifar100(folders),
    "stl10": lambda folders, n_px: formats.read_stl10(folders),
    "digits": lambda folders, n_px: formats.read_digits(),
}
_PATH_KINDS: dict[str, Callable[[Path, int | None], Source]] = {
    "imagefolder": formats.read_imagefolder,
    "npz": lambda path, n_px: formats.read_npz(path),
}


def register_dataset(name: str, loader: Loader) -> None:
    """Add (or replace) a named dataset; ``loader(folders, n_px)`` returns a ``Source``."""
    _REGISTRY[name] = loader


def list_datasets() -> list[str]:
    """The known dataset names (path kinds shown as ``kind:PATH``)."""
    return sorted(_REGISTRY) + [f"{k}:PATH" for k in _PATH_KINDS]


def search_folders(data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders searched for named datasets: ``data_dir``, else ``$IGPT_EVAL_DATA``, ``./data``."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("IGPT_EVAL_DATA")
    return ([Path(env).expanduser()] if env else []) + [Path("data")]


def read_source(name: str, data_dir=None, n_px: int | None = None) -> Source:
    """Read dataset ``name`` from disk (all of it, before any split)."""
    kind, sep, arg = name.partition(":")
    if sep and kind in _PATH_KINDS:
        if not arg:
            raise IGPTError(f"dataset {name!r} needs a path, e.g. {kind}:/path/to/data")
        return _PATH_KINDS[kind](Path(arg).expanduser(), n_px)
    if name in _REGISTRY:
        return _REGISTRY[name](search_folders(data_dir), n_px)
    raise IGPTError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")
