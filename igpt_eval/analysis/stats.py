"""Analyses over cached features: bootstrap confidence intervals, paired statistics,
weighted kNN, linear CKA.

All functions take plain arrays (a cache layer ``cache[l]`` is one), so notebooks can call
them on any features::

    r = knn_accuracy(train[4], train.labels, test[4], test.labels)   # DINO's kNN
    r.accuracy, bootstrap_accuracy_ci(r.correct)
    paired_difference(correct_a, correct_b)     # a − b on the same test images: CI and p
    cka_matrix([test[l] for l in test.layers])                       # (L, L) linear CKA
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

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


# --------------------------------------------------------------------------- kNN
class KNNResult(NamedTuple):
    """What :func:`knn_accuracy` returns: the accuracy, per-example correctness (for
    :func:`bootstrap_accuracy_ci`) and the predicted labels."""

    accuracy: float
    correct: np.ndarray  # (n_test,) bool
    pred: np.ndarray  # (n_test,) labels, in the label values of train_y


def _check_xy(X, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2:
        raise IGPTError(f"{what} features must be (rows, dim), got shape {X.shape}")
    if y.shape != (X.shape[0],):
        raise IGPTError(f"{what} has {X.shape[0]} feature rows but labels of shape {y.shape}")
    if X.shape[0] == 0:
        raise IGPTError(f"{what} has no rows")
    return X, y


def knn_accuracy(
    train_X,
    train_y,
    test_X,
    test_y,
    k: int = 20,
    temperature: float = 0.07,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> KNNResult:
    """Weighted k-nearest-neighbour classification (the protocol of DINO, Caron et al. 2021).

    Features are L2-normalised, similarity is the cosine (a dot product), and each test row
    takes its ``k`` most similar training rows; neighbour ``i`` votes for its label with
    weight ``exp(sim_i / temperature)`` and the class with the largest total wins (ties: the
    smaller class). Test rows are processed ``batch_size`` at a time, so memory is
    ``batch_size × n_train`` similarities, never the full matrix.

    ``train_X`` (n_train, d), ``train_y`` (n_train,), ``test_X`` (n_test, d), ``test_y``
    (n_test,). Returns a :class:`KNNResult` ``(accuracy, correct, pred)``.
    """
    train_X, train_y = _check_xy(train_X, train_y, "the kNN training set")
    test_X, test_y = _check_xy(test_X, test_y, "the kNN test set")
    if train_X.shape[1] != test_X.shape[1]:
        raise IGPTError(f"train has {train_X.shape[1]} features but test {test_X.shape[1]}")
    if k < 1 or not temperature > 0 or batch_size < 1:
        raise IGPTError(
            f"kNN needs k >= 1, temperature > 0 and batch_size >= 1 "
            f"(got k={k}, temperature={temperature}, batch_size={batch_size})"
        )
    k = min(k, len(train_y))
    classes, y_idx = np.unique(train_y, return_inverse=True)
    dev = torch.device(device)
    # torch.tensor copies: caches are read-only memmaps, which torch will not wrap.
    bank = torch.nn.functional.normalize(
        torch.tensor(train_X, dtype=torch.float32, device=dev), dim=1
    )  # (n_train, d)
    labels = torch.as_tensor(y_idx, device=dev)  # (n_train,)
    pred = np.empty(len(test_y), dtype=np.int64)
    for s in range(0, len(test_y), batch_size):
        q = torch.tensor(test_X[s : s + batch_size], dtype=torch.float32, device=dev)
        q = torch.nn.functional.normalize(q, dim=1)  # (B, d)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (B, k)
        votes = torch.zeros(len(q), len(classes), device=dev)  # (B, C)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        pred[s : s + len(q)] = votes.argmax(1).cpu().numpy()
    pred = classes[pred]
    correct = pred == test_y
    return KNNResult(float(correct.mean()), correct, pred)


# --------------------------------------------------------------------------- CKA
def _centered(X, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise IGPTError(f"{what} must be (rows, dim), got shape {X.shape}")
    return X - X.mean(0)


def _cross(X: np.ndarray, Y: np.ndarray) -> float:
    """||Xc^T Yc||_F^2 for centred X (n, dx), Y (n, dy), the cheaper way round."""
    n = X.shape[0]
    if n < max(X.shape[1], Y.shape[1]):  # few rows: the n × n Gram form is cheaper
        return float(np.sum((X @ X.T) * (Y @ Y.T)))
    return float(np.sum((Y.T @ X) ** 2))


def _self_norm(X) -> float:
    """||Xc^T Xc||_F of one layer's features."""
    X = _centered(X, "a layer")
    return float(np.sqrt(_cross(X, X)))


def linear_cka(X, Y) -> float:
    """Centred linear CKA (Kornblith et al. 2019) between features ``X`` (n, dx) and ``Y``
    (n, dy) of the same n examples, in float64:

        CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)

    computed in feature space, O(n·d²), so n = 10k rows is cheap (with fewer rows than
    features the equivalent n × n Gram form is used). 1 for identical representations,
    invariant to orthogonal transforms and isotropic scaling; NaN when either input is
    constant.
    """
    X, Y = _centered(X, "X"), _centered(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise IGPTError(f"CKA needs the same examples: X has {X.shape[0]} rows, Y {Y.shape[0]}")
    den = np.sqrt(_cross(X, X) * _cross(Y, Y))
    return _cross(X, Y) / den if den > 0 else float("nan")


def cka_matrix(feats_a: Sequence | np.ndarray, feats_b: Sequence | np.ndarray | None = None):
    """Linear CKA between every layer of ``feats_a`` and every layer of ``feats_b``.

    Each is a sequence of per-layer features (n, d_l) of the same n examples, or an array
    (L, n, d); for a cache, pass ``[cache[l] for l in cache.layers]``. Without ``feats_b``
    the matrix is ``feats_a`` against itself (symmetric, computed once per pair). Returns a
    float64 array (La, Lb). Layers are centred one at a time, so memory stays at a few
    layers' worth of float64.
    """
    same = feats_b is None
    feats_b = feats_a if same else feats_b
    if len(feats_a) == 0 or len(feats_b) == 0:
        raise IGPTError("CKA needs at least one layer of features on each side")
    # ||X^T X||_F of each layer, computed once.
    norm_a = [_self_norm(f) for f in feats_a]
    norm_b = norm_a if same else [_self_norm(f) for f in feats_b]
    out = np.full((len(feats_a), len(feats_b)), np.nan)
    for i, fa in enumerate(feats_a):
        X = _centered(fa, "a layer")
        for j in range(i if same else 0, len(feats_b)):
            Y = X if same and j == i else _centered(feats_b[j], "a layer")
            if Y.shape[0] != X.shape[0]:
                raise IGPTError(
                    f"CKA needs the same examples on both sides ({X.shape[0]} vs {Y.shape[0]} rows)"
                )
            den = norm_a[i] * norm_b[j]
            out[i, j] = _cross(X, Y) / den if den > 0 else np.nan
            if same:
                out[j, i] = out[i, j]
    return out
