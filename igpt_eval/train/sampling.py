"""The random draws every trainer shares: which images make batch ``s``, its BERT masks, its
augmentation, and the fixed masks evaluations use.

Each is a pure function of ``(seed, step)`` (or of a fixed seed), drawn from a generator of
its own stream, so a run killed at any step and resumed draws exactly what an unbroken one
would, and a change to one stream (say, augmentation) leaves the others as they were.
"""

from __future__ import annotations

import numpy as np
import torch

#: BERT masks of every evaluation (validation loss, fine-tuning accuracy): one fixed seed, so
#: evaluations along a run, and across runs, score the same masked inputs.
EVAL_MASK_SEED = 12345

# Stream -> (multiplier of the step or epoch, offset): generator seed
# ``seed * 1_000_003 + multiplier * index + offset``. The values are those the shipped models
# were trained with; changing one changes every run's draws.
_STREAMS = {"batch": (1, 0), "mask": (7_919, 1), "augment": (31, 5)}


def generator(stream: str, seed: int, index: int) -> torch.Generator:
    """The CPU generator of ``stream`` (``batch``: per epoch; ``mask``, ``augment``: per
    step) for a run seeded ``seed``."""
    mult, offset = _STREAMS[stream]
    return torch.Generator().manual_seed(seed * 1_000_003 + mult * index + offset)


def batch_rows(step: int, n: int, batch: int, seed: int) -> np.ndarray:
    """The image indices of global batch ``step``: epoch-wise seeded permutations, the
    incomplete tail of each epoch dropped."""
    per_epoch = n // batch
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=generator("batch", seed, epoch)).numpy()
    return np.sort(perm[i * batch : (i + 1) * batch])  # sorted: kinder to memmap reads


def mask_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``'s BERT masks."""
    return generator("mask", seed, step)


def eval_mask_generator() -> torch.Generator:
    """The generator of an evaluation's BERT masks (:data:`EVAL_MASK_SEED`)."""
    return torch.Generator().manual_seed(EVAL_MASK_SEED)
