"""``load_dataset``: one split of a registered dataset, resized, with a content fingerprint."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from igpt_eval.data.formats import Source
from igpt_eval.data.registry import read_source
from igpt_eval.data.resize import resize_images
from igpt_eval.data.splits import (
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    SPLITS,
    split_indices,
    stratified_split,
)
from igpt_eval.errors import IGPTError
from igpt_eval.io import array_hash


@dataclass
class ImageDataset:
    """One split of a dataset, in memory.

    ``images`` is uint8 ``[N, H, W, C]`` (``C = 1`` for grey), ``labels`` int64 ``[N]``,
    ``classes`` the names of label ids ``0..len(classes)-1``. ``n_px`` is the side length when
    the images are square (else None). ``fingerprint`` hashes the source content (every image
    and label the files hold), the split, ``n_px`` and (for ``train``/``val``) the split seed,
    so a changed input file changes it; a dataset built by hand hashes its own arrays.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str
    split: str
    n_px: int | None
    seed: int = 0
    fingerprint: str = field(default="")

    def __post_init__(self):
        if not self.fingerprint:  # built by hand: fingerprint its own content
            content = array_hash(self.images) + array_hash(self.labels)
            self.fingerprint = dataset_fingerprint(content, self.split, self.n_px, self.seed)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        """1 for grey, 3 for RGB."""
        return self.images.shape[-1]

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={tuple(self.images.shape[1:])}, classes={len(self.classes)}, "
            f"fingerprint={self.fingerprint})"
        )


def source_hash(src: Source) -> str:
    """Hash of everything a dataset's files hold (all images and labels, both splits)."""
    arrays = (src.train_images, src.train_labels, src.test_images, src.test_labels)
    return "".join(array_hash(a) for a in arrays if a is not None)


def dataset_fingerprint(content: str, split: str, n_px: int | None, seed: int) -> str:
    """Hash of the source ``content`` hash, the split, ``n_px`` and the split seed."""
    # The seed only decides train/val membership; leaving it out elsewhere lets test and
    # trainval caches be shared across seeds.
    seed_part = seed if split in ("train", "val") else None
    key = f"v1|{content}|{split}|{n_px}|{seed_part}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def load_dataset(
    name: str,
    split: str = "train",
    n_px: int | None = None,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load one split (``train``, ``val``, ``trainval`` or ``test``) of dataset ``name``.

    ``val`` is a seeded, stratified 10% of the original training set and ``train`` the rest
    (see :mod:`igpt_eval.data.splits`). With ``n_px`` the images are centre-cropped to square
    and resized to ``n_px x n_px`` (area averaging down, bicubic up; see
    :mod:`igpt_eval.data.resize`); without it they keep their native size.
    """
    if split not in SPLITS:
        raise IGPTError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    src = read_source(name, data_dir=data_dir, n_px=n_px)
    train_x, train_y = src.train_images, src.train_labels
    test_x, test_y = src.test_images, src.test_labels
    if test_x is None:
        keep, held = stratified_split(train_y, HOLDOUT_FRACTION, HOLDOUT_SEED)
        test_x, test_y = train_x[held], train_y[held]
        train_x, train_y = train_x[keep], train_y[keep]
    if split == "test":
        images, labels = test_x, test_y
    else:
        rows = split_indices(train_y, split, seed)
        images, labels = train_x[rows], train_y[rows]
    content = source_hash(src)
    if n_px is not None:
        images = _resized(images, n_px, dataset_fingerprint(content, split, n_px, seed))
    h, w = images.shape[1:3]
    n_px = int(h) if h == w else None
    return ImageDataset(
        images=np.ascontiguousarray(images),
        labels=np.ascontiguousarray(labels, dtype=np.int64),
        classes=list(src.classes),
        name=name,
        split=split,
        n_px=n_px,
        seed=seed,
        fingerprint=dataset_fingerprint(content, split, n_px, seed),
    )


#: Resized splits already made in this process, by fingerprint: one ``probe`` run resizes
#: each split twice otherwise (for the model's cache and for the pixel baseline), and
#: resizing is most of what loading costs (PIL, image by image). The key hashes the files'
#: content as just read, so a changed file is a new key, never a stale hit.
_RESIZED: OrderedDict[str, np.ndarray] = OrderedDict()
_RESIZED_MAX_BYTES = 512 * 2**20


def _resized(images: np.ndarray, n_px: int, key: str) -> np.ndarray:
    """``resize_images(images, n_px)``, memoised by ``key`` (a copy is returned, so callers
    may write to it)."""
    if key not in _RESIZED:
        _RESIZED[key] = resize_images(images, n_px)
        while sum(a.nbytes for a in _RESIZED.values()) > _RESIZED_MAX_BYTES and len(_RESIZED) > 1:
            _RESIZED.popitem(last=False)  # the oldest goes first
    _RESIZED.move_to_end(key)
    return _RESIZED[key].copy()
