"""Deterministic, stratified splits.

- ``trainval``: the dataset's original training set.
- ``val``: 10% of ``trainval``, drawn with ``seed``, stratified by label.
- ``train``: ``trainval`` minus ``val``.
- ``test``: the original test set. Formats without one (``digits``, ``npz`` without
  ``test_images``, an image folder without ``train/``/``test/``) hold out a fixed 1/6 of the
  data, stratified, always with :data:`HOLDOUT_SEED` so the test set never moves with
  ``seed``.

Indices are returned sorted, so every split keeps the source order.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from igpt_eval.errors import IGPTError

SPLITS = ("train", "val", "trainval", "test")
VAL_FRACTION = 0.1
HOLDOUT_FRACTION = 1 / 6
HOLDOUT_SEED = 0


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, n_out: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into (keep, held-out) index arrays, both sorted.

    The held-out part is ``n_out`` rows (default ``ceil(fraction * n)``), stratified by label
    where every class has at least two members and the held-out part can hold one of each;
    otherwise (tiny data) a plain seeded random split.
    """
    n = len(labels)
    if n < 2:
        raise IGPTError(f"cannot split {n} example(s); a split needs at least 2")
    idx = np.arange(n)
    if n_out is None:
        n_out = max(1, int(np.ceil(fraction * n)))
    _, counts = np.unique(labels, return_counts=True)
    can_stratify = counts.min() >= 2 and len(counts) <= n_out <= n - len(counts)
    keep, out = train_test_split(
        idx, test_size=n_out, random_state=seed, stratify=labels if can_stratify else None
    )
    return np.sort(keep), np.sort(out)


def split_indices(labels: np.ndarray, split: str, seed: int = 0) -> np.ndarray:
    """Row indices of ``split`` within the original training set (``labels``)."""
    if split == "trainval":
        return np.arange(len(labels))
    if split not in ("train", "val"):
        raise IGPTError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    train, val = stratified_split(labels, VAL_FRACTION, seed)
    return train if split == "train" else val


def subset_rows(labels, n: int, seed: int):
    """Sorted indices of a stratified sample of ``n`` of the rows of ``labels`` (seeded):
    each class keeps its share, so a capped split has the full split's class balance."""
    if n < 1:
        raise IGPTError(f"a split capped at {n} rows has nothing to probe; give a positive size")
    _, rows = stratified_split(np.asarray(labels), n / len(labels), seed, n_out=n)
    return rows
