"""Statistics of accuracies measured on test images: plain arrays in, numbers out.

- :func:`bootstrap_accuracy_ci`: a percentile bootstrap interval for one accuracy;
- :func:`paired_difference` (:func:`paired_bootstrap` and :func:`mcnemar_exact`): the
  difference of two predictors scored on the *same* test images, with its paired bootstrap
  interval and McNemar's exact p-value (:class:`PairedResult`)::

      bootstrap_accuracy_ci(correct)              # (ci_low, ci_high) of correct.mean()
      paired_difference(correct_a, correct_b)     # a − b on the same test images: CI and p

Every stage that scores on the test split uses them (fine-tuning, the probes, the
analyses), so they sit at the top of the package beside :mod:`igpt_eval.results`, below
every stage, and are imported from here only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from igpt_eval.errors import IGPTError


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


# --------------------------------------------------------------------------- paired
class PairedResult(NamedTuple):
    """The accuracy difference ``a − b`` of two predictors on the same ``n`` examples.

    ``diff`` is a fraction (0.01 = one percentage point), ``ci_low``/``ci_high`` its paired
    bootstrap interval, ``p_value`` McNemar's exact two-sided test, ``n10`` the examples
    only ``a`` gets right and ``n01`` those only ``b`` gets right (the discordant pairs).
    """

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    n01: int
    n10: int


def _paired_counts(correct_a, correct_b) -> tuple[int, int, int]:
    """``(n, n01, n10)`` of two per-example correctness vectors of the same examples."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape:
        raise IGPTError(
            f"paired statistics need the same examples on both sides, got shapes {a.shape} "
            f"and {b.shape}"
        )
    return a.size, int(np.sum(~a & b)), int(np.sum(a & ~b))


def paired_bootstrap(
    correct_a, correct_b, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """``(diff, ci_low, ci_high)``: the accuracy difference ``a − b`` and its percentile
    bootstrap interval, both predictors resampled on the *same* test indices.

    Per example the difference is +1 (only ``a`` right), −1 (only ``b`` right) or 0, so a
    resample of n indices is summarised by how many +1 and −1 examples it draws, which is
    exactly a Multinomial(n; n10/n, n01/n, rest) draw. Sampling that (vectorised, seeded)
    has the distribution of resampling indices without materialising ``n_boot × n`` of
    them (the same argument as :func:`bootstrap_accuracy_ci`). The concordant examples
    carry no information about the difference; that is why the paired interval is much
    narrower than the marginal ones suggest.
    """
    n, n01, n10 = _paired_counts(correct_a, correct_b)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    # The smaller discordant count is drawn first whichever side it belongs to, so that
    # swapping a and b (same seed) mirrors the interval exactly.
    first, second = sorted((n10, n01))
    draws = rng.multinomial(n, [first / n, second / n, (n - n10 - n01) / n], size=n_boot)
    plus, minus = (draws[:, 0], draws[:, 1]) if n10 <= n01 else (draws[:, 1], draws[:, 0])
    boot = (plus - minus) / n
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return (n10 - n01) / n, float(lo), float(hi)


def mcnemar_exact(correct_a, correct_b) -> float:
    """McNemar's exact test of "a and b are equally accurate": the two-sided binomial
    p-value of the discordant pairs (n10 of n01 + n10 at p = 1/2); 1 when there are none."""
    from scipy.stats import binomtest

    _, n01, n10 = _paired_counts(correct_a, correct_b)
    if n01 + n10 == 0:
        return 1.0
    return float(binomtest(n10, n01 + n10, 0.5).pvalue)


def paired_difference(
    correct_a, correct_b, n_boot: int = 10_000, alpha: float = 0.05, seed: int = 0
) -> PairedResult:
    """:func:`paired_bootstrap` and :func:`mcnemar_exact` of two predictors' per-example
    correctness on the same examples, as one :class:`PairedResult`."""
    diff, lo, hi = paired_bootstrap(correct_a, correct_b, n_boot=n_boot, alpha=alpha, seed=seed)
    n, n01, n10 = _paired_counts(correct_a, correct_b)
    return PairedResult(diff, lo, hi, mcnemar_exact(correct_a, correct_b), n, n01, n10)
