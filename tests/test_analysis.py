"""kNN (DINO's weighted vote) and linear CKA against brute-force references."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from igpt_eval.analysis.similarity import cka_matrix, knn_accuracy, linear_cka
from igpt_eval.errors import IGPTError
from igpt_eval.stats import bootstrap_accuracy_ci


# --------------------------------------------------------------------------- kNN
def knn_brute(Xtr, ytr, Xte, k, T):
    """The DINO vote written out with numpy, one test row at a time."""
    a = Xtr / np.linalg.norm(Xtr, axis=1, keepdims=True)
    b = Xte / np.linalg.norm(Xte, axis=1, keepdims=True)
    classes = np.unique(ytr)
    pred = []
    for q in b:
        sim = a @ q
        nn = np.argsort(-sim)[:k]
        votes = [np.exp(sim[nn][ytr[nn] == c] / T).sum() for c in classes]
        pred.append(classes[int(np.argmax(votes))])
    return np.array(pred)


@pytest.mark.parametrize("k, T, batch", [(20, 0.07, 7), (5, 1.0, 1000), (1, 0.07, 3)])
def test_knn_matches_brute_force(k, T, batch):
    rng = np.random.default_rng(0)
    Xtr, Xte = rng.normal(size=(300, 6)), rng.normal(size=(50, 6))
    ytr, yte = rng.integers(0, 4, 300) * 3 + 1, rng.integers(0, 4, 50) * 3 + 1  # labels 1,4,7,10
    r = knn_accuracy(Xtr, ytr, Xte, yte, k=k, temperature=T, batch_size=batch)
    want = knn_brute(Xtr, ytr, Xte, k, T)
    np.testing.assert_array_equal(r.pred, want)
    np.testing.assert_array_equal(r.correct, want == yte)
    assert r.accuracy == pytest.approx((want == yte).mean())


def test_knn_temperature_changes_the_vote():
    # One very close neighbour of class 0 against four far ones of class 1: a sharp
    # temperature lets the close one win, a flat one lets the majority win.
    Xtr = np.array([[1.0, 0.0]] + [[0.0, 1.0]] * 4)
    ytr = np.array([0, 1, 1, 1, 1])
    q = np.array([[1.0, 0.6]])
    assert knn_accuracy(Xtr, ytr, q, [0], k=5, temperature=0.07).pred[0] == 0
    assert knn_accuracy(Xtr, ytr, q, [1], k=5, temperature=100.0).pred[0] == 1


def test_knn_digits_sanity():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    r = knn_accuracy(X[:1500], y[:1500], X[1500:], y[1500:])
    assert r.accuracy > 0.9 and r.correct.shape == (len(y) - 1500,)
    shuffled = knn_accuracy(X[:1500], np.random.default_rng(0).permutation(y[:1500]),
                            X[1500:], y[1500:])  # fmt: skip
    assert shuffled.accuracy < 0.25  # labels carry the signal, not the class balance
    lo, hi = bootstrap_accuracy_ci(r.correct)
    assert lo < r.accuracy < hi


def test_knn_bad_input():
    X = np.zeros((4, 3))
    with pytest.raises(IGPTError, match="features"):
        knn_accuracy(X, [0, 1, 0, 1], np.zeros((2, 5)), [0, 1])
    with pytest.raises(IGPTError, match="labels"):
        knn_accuracy(X, [0, 1], X, [0, 1, 0, 1])
    with pytest.raises(IGPTError, match="k >= 1"):
        knn_accuracy(X, [0, 1, 0, 1], X, [0, 1, 0, 1], k=0)


# --------------------------------------------------------------------------- CKA
def cka_naive(X, Y):
    """CKA from the n × n Gram matrices: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = len(X)
    H = np.eye(n) - 1.0 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def test_cka_matches_gram_form():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 8))
    Y = X @ rng.normal(size=(8, 5)) + 0.5 * rng.normal(size=(60, 5))
    assert linear_cka(X, Y) == pytest.approx(cka_naive(X, Y), rel=1e-10)
    wide = rng.normal(size=(20, 50))  # fewer rows than features: the Gram branch
    assert linear_cka(wide, Y[:20]) == pytest.approx(cka_naive(wide, Y[:20]), rel=1e-10)


def test_cka_invariances():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 10)) * np.linspace(0.2, 3, 10)  # anisotropic
    Y = np.tanh(X @ rng.normal(size=(10, 7)))
    ref = linear_cka(X, Y)
    assert linear_cka(X, X) == pytest.approx(1.0)
    Q = ortho_group.rvs(10, random_state=3)
    assert linear_cka(X @ Q, Y) == pytest.approx(ref, rel=1e-10)
    assert linear_cka(7.5 * X + 3.0, Y) == pytest.approx(ref, rel=1e-10)  # scale and shift
    # Not invariant to anisotropic scaling (what separates CKA from CCA).
    assert abs(linear_cka(X * np.linspace(1, 20, 10), Y) - ref) > 1e-3
    independent = linear_cka(rng.normal(size=(2000, 10)), rng.normal(size=(2000, 10)))
    assert independent < 0.02
    assert np.isnan(linear_cka(np.ones((5, 3)), X[:5]))


def test_cka_matrix():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(100, 6))
    layers = [base, base @ rng.normal(size=(6, 6)), rng.normal(size=(100, 4))]
    M = cka_matrix(layers)
    assert M.shape == (3, 3)
    np.testing.assert_allclose(np.diag(M), 1.0)
    np.testing.assert_allclose(M, M.T)
    assert M[0, 1] > 0.5 and M[0, 2] < 0.2
    assert M[0, 2] == pytest.approx(linear_cka(layers[0], layers[2]))
    cross = cka_matrix(np.stack([base, base * 2]), layers)  # an (L, n, d) array works too
    assert cross.shape == (2, 3)
    np.testing.assert_allclose(cross[1], M[0])
    with pytest.raises(IGPTError, match="same examples"):
        cka_matrix(layers, [base[:50]])
