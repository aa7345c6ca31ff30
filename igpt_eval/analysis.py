"""Analyses over cached features: bootstrap confidence intervals (kNN and CKA to come)."""

from __future__ import annotations

import numpy as np


def bootstrap_accuracy_ci(
    correct: np.ndarray, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for an accuracy, from per-example correctness.

    Resampling n examples with replacement and counting the correct ones is exactly a
    Binomial(n, p̂) draw, so the bootstrap is sampled that way: same distribution as
    resampling indices, without materialising n_boot × n of them.
    """
    correct = np.asarray(correct, dtype=bool)
    n = correct.size
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    acc = rng.binomial(n, correct.mean(), size=n_boot) / n
    return float(np.quantile(acc, alpha / 2)), float(np.quantile(acc, 1 - alpha / 2))
