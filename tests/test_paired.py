"""Paired statistics: the paired bootstrap and McNemar's exact test on hand-computed cases."""

import numpy as np
import pytest

from igpt_eval.analysis import mcnemar_exact, paired_bootstrap, paired_difference
from igpt_eval.errors import IGPTError


def pair(n11, n10, n01, n00):
    """Correctness vectors with the given counts (a right & b right, only a, only b, none)."""
    a = np.repeat([1, 1, 0, 0], [n11, n10, n01, n00]).astype(bool)
    b = np.repeat([1, 0, 1, 0], [n11, n10, n01, n00]).astype(bool)
    return a, b


@pytest.mark.parametrize(
    "n10, n01, p",
    [
        (2, 0, 0.5),  # 2 · P(X = 2 | 2, 1/2)
        (5, 0, 0.0625),  # 2 / 2^5
        (8, 2, 112 / 1024),  # 2 · P(X <= 2 | 10, 1/2) = 2 (1 + 10 + 45) / 1024
        (3, 3, 1.0),
    ],
)
def test_mcnemar_exact_by_hand(n10, n01, p):
    a, b = pair(7, n10, n01, 4)
    assert mcnemar_exact(a, b) == pytest.approx(p)
    r = paired_difference(a, b)
    assert (r.n, r.n10, r.n01) == (len(a), n10, n01)
    assert r.diff == pytest.approx((n10 - n01) / len(a))
    assert r.p_value == pytest.approx(p)


def test_identical_predictors():
    a, _ = pair(30, 5, 0, 10)
    r = paired_difference(a, a)
    assert (r.diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert r.n01 == r.n10 == 0


def test_superset_is_above_zero():
    # a is right wherever b is, and on 30 of 1,000 more examples: a real difference even
    # though the marginal 95% intervals (about ±2.5 points each) overlap.
    a, b = pair(800, 30, 0, 170)
    diff, lo, hi = paired_bootstrap(a, b)
    assert diff == pytest.approx(0.03)
    assert 0 < lo < diff < hi
    assert mcnemar_exact(a, b) < 1e-8


def test_symmetric_and_seeded():
    a, b = pair(400, 37, 21, 142)
    r, s = paired_difference(a, b, seed=3), paired_difference(b, a, seed=3)
    assert s.diff == -r.diff and (s.n10, s.n01) == (r.n01, r.n10)
    assert s.ci_low == pytest.approx(-r.ci_high) and s.ci_high == pytest.approx(-r.ci_low)
    assert s.p_value == r.p_value
    assert paired_difference(a, b, seed=3) == r  # same seed, same interval


def test_equals_resampling_the_same_indices():
    """The multinomial shortcut has the distribution of resampling the same test indices
    for both predictors: compare with the literal bootstrap."""
    a, b = pair(300, 40, 25, 135)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(a), size=(4000, len(a)))
    literal = a[idx].mean(1) - b[idx].mean(1)
    want = np.quantile(literal, [0.025, 0.975])
    _, lo, hi = paired_bootstrap(a, b, n_boot=20_000)
    np.testing.assert_allclose([lo, hi], want, atol=0.004)


def test_paired_bad_input():
    with pytest.raises(IGPTError, match="same examples"):
        paired_bootstrap(np.ones(3, bool), np.ones(4, bool))
    assert np.isnan(paired_bootstrap(np.ones(0, bool), np.ones(0, bool))[0])
