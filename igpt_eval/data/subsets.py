"""Labelled subsets and augmentation for fine-tuning and low-data evaluation.

- :func:`labelled_subset`: exactly K examples per class, seeded, nested across K;
- :func:`lowdata_split`: that subset split into a training part and a held-out part, so a
  low-data evaluation chooses its hyper-parameters from the same K labels per class;
- :func:`augment_images`: the paper's augmentation on uint8 images;
- :class:`Labelled`: tokens (and optionally images) with labels, as fine-tuning reads them;
  :class:`LabelledSplits`: the splits of one fine-tuning run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from igpt_eval.errors import IGPTError


def labelled_subset(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted row indices of exactly ``k`` examples of every class in ``labels``.

    Each class's rows are permuted with a generator seeded by ``seed`` and the first ``k``
    taken, so for one seed the subsets are nested (k=4 ⊂ k=25 ⊂ k=400).
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise IGPTError(
            "the dataset has fewer than two classes (no labels to learn from); "
            "fine-tuning and low-data evaluation need a labelled dataset"
        )
    if k < 1 or k > counts.min():
        small = classes[counts.argmin()]
        raise IGPTError(
            f"--labels-per-class {k} is not in 1..{counts.min()}: class {small} has only "
            f"{counts.min()} training examples"
        )
    rng = np.random.default_rng([seed, 7])
    rows = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in classes]
    return np.sort(np.concatenate(rows))


def lowdata_split(
    labels: np.ndarray, k: int, seed: int, val_fraction: float = 0.25, max_val: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_rows, val_rows)``: the K-per-class subset, split into a training part and a
    held-out part for choosing hyper-parameters, both stratified.

    A quarter of each class's ``k`` labels (at least 1, at most ``max_val``) is held out, so
    the whole low-data evaluation sees only ``k`` labels per class; ``k`` must be >= 2.
    """
    if k < 2:
        raise IGPTError(
            f"--labels-per-class must be >= 2 (one to train on, one to validate), not {k}"
        )
    rows = labelled_subset(labels, k, seed)
    n_val = int(min(max_val, max(1, round(val_fraction * k))))
    val = []
    for c in np.unique(labels):
        mine = rows[labels[rows] == c]  # sorted; pick the held-out ones by a seeded draw
        val.append(np.random.default_rng([seed, 11, int(c)]).choice(mine, n_val, replace=False))
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(rows, val), val


def augment_images(images: np.ndarray, generator: torch.Generator, pad: int = 4) -> np.ndarray:
    """The paper's augmentation on uint8 images ``[B, H, W, C]``: reflection-pad by ``pad``,
    crop back to ``H x W`` at a random offset, flip horizontally with probability 1/2."""
    B, H, W, _ = images.shape
    if pad >= min(H, W):
        raise IGPTError(f"cannot reflection-pad {H}x{W} images by {pad} pixels")
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=generator).numpy()
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=generator).numpy()
    flip = torch.rand(B, generator=generator).numpy() < 0.5
    rows = oy[:, None] + np.arange(H)  # (B, H)
    cols = ox[:, None] + np.where(flip[:, None], np.arange(W)[::-1], np.arange(W))  # (B, W)
    return padded[np.arange(B)[:, None, None], rows[:, :, None], cols[:, None, :]]


@dataclass
class Labelled:
    """Examples for fine-tuning: palette ids ``tokens [N, T]`` (a cache memmap is fine) and
    ``labels [N]``; ``images [N, H, W, C]`` uint8 too when batches are augmented."""

    tokens: np.ndarray | None
    labels: np.ndarray
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> Labelled:
        """The subset at ``rows`` (read into memory)."""
        pick = lambda a: None if a is None else np.asarray(a[rows])  # noqa: E731
        return Labelled(pick(self.tokens), np.asarray(self.labels)[rows], pick(self.images))


@dataclass
class LabelledSplits:
    """What one fine-tuning run reads: it trains on ``train``, early-stops on ``val`` and
    scores the best model on ``test``."""

    train: Labelled
    val: Labelled
    test: Labelled | None = None  # None: scored on validation only (a rate sweep's runs)
    n_classes: int | None = None  # the head's outputs; None: one more than the largest label

    def classes(self) -> int:
        """The head's number of outputs."""
        splits = [s for s in (self.train, self.val, self.test) if s is not None]
        return self.n_classes or int(max(s.labels.max() for s in splits) + 1)
