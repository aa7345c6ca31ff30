"""Analyses over cached features: weighted kNN and linear CKA. (The bootstrap intervals and
paired statistics are :mod:`igpt_eval.stats`, where every stage finds them.)

All functions take plain arrays (a cache layer ``cache[l]`` is one), so notebooks can call
them on any features::

    r = knn_accuracy(train[4], train.labels, test[4], test.labels)   # DINO's kNN
    r.accuracy, igpt_eval.stats.bootstrap_accuracy_ci(r.correct)
    cka_matrix([test[l] for l in test.layers])                       # (L, L) linear CKA
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from igpt_eval.errors import IGPTError

__all__ = [
    "KNNResult",
    "cka_matrix",
    "knn_accuracy",
    "linear_cka",
]


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
