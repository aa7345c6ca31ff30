"""Linear probes: agreement with scikit-learn, batching, the protocol, bad input."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from igpt_eval import IGPTError
from igpt_eval.probes import (
    Features,
    LBFGSOptions,
    LogisticProbe,
    Protocol,
    fit_grid,
    fit_path,
    probe_lbfgs,
)
from igpt_eval.probes.backends import cuml_regularisation, objective
from igpt_eval.results import COLUMNS, to_frame

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return X[:1200], y[:1200], X[1200:], y[1200:]


@pytest.fixture(scope="module")
def fmnist_pixels():
    pytest.importorskip("sklearn")
    import os

    if not os.path.exists(FMNIST):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from igpt_eval.data import load_dataset

    tr = load_dataset("fashion-mnist", "train", n_px=10)
    te = load_dataset("fashion-mnist", "test", n_px=10)
    f = lambda d, n: (d.images[:n].reshape(n, -1) / 255.0, d.labels[:n])  # noqa: E731
    return (*f(tr, 2000), *f(te, 2000))


@pytest.mark.parametrize("data", ["digits", "fmnist_pixels"])
@pytest.mark.parametrize("C", [0.01, 0.3, 3.0])
def test_matches_sklearn_on_real_data(request, data, C):
    Xtr, ytr, Xte, yte = request.getfixturevalue(data)
    ours = LogisticProbe(C=C).fit(Xtr, ytr)
    ref = LogisticRegression(C=C, max_iter=5000).fit(Xtr, ytr)
    assert ours.converged_ and ref.n_iter_[0] < 5000
    assert abs(ours.score(Xte, yte) - ref.score(Xte, yte)) <= 0.002 + 1e-12
    # Tight tolerances on both sides: the same optimum of the same objective.
    tight = LogisticProbe(C=C, dtype="float64", tol=1e-6).fit(Xtr, ytr)
    ref = LogisticRegression(C=C, tol=1e-7, max_iter=20000).fit(Xtr, ytr)
    f_ours = objective(tight.coef_, tight.intercept_, Xtr, ytr, C)
    f_ref = objective(ref.coef_, ref.intercept_, Xtr, ytr, C)
    assert abs(f_ours - f_ref) <= 1e-4 * abs(f_ref)


def test_binary_problems_use_sklearns_binomial_objective(digits):
    Xtr, ytr, _, _ = digits
    keep = ytr < 2
    X, y = Xtr[keep], ytr[keep]
    ours = LogisticProbe(C=0.05, dtype="float64", tol=1e-8).fit(X, y)
    ref = LogisticRegression(C=0.05, tol=1e-10, max_iter=10000).fit(X, y)
    w = ours.coef_[1] - ours.coef_[0]
    np.testing.assert_allclose(w, ref.coef_[0], atol=1e-4)
    np.testing.assert_allclose(ours.decision_function(X), ref.decision_function(X), atol=1e-3)


@parametrize_with_checks([LogisticProbe()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_batched_grid_equals_single_problems(digits):
    Xtr, ytr, _, _ = digits
    X = np.stack([Xtr, Xtr[:, ::-1] * 0.5])  # two "layers"
    Cs = [0.03, 1.0, 10.0]
    tight = LBFGSOptions(tol=1e-6)
    res = fit_grid(X, ytr, Cs, 10, dtype="float64", options=tight)
    assert res.coef.shape == (2, 3, 10, 64) and res.converged.all()
    for g in range(2):
        for c, C in enumerate(Cs):
            one = LogisticProbe(C=C, dtype="float64", tol=1e-6).fit(X[g], ytr)
            # The same optimum: objective and probabilities. (Not the weights entry by entry:
            # digits has all-zero pixels, a flat subspace the weights may differ along.)
            W, b = res.coef[g, c].numpy(), res.intercept[g, c].numpy()
            f = objective(W, b, X[g], ytr, C)
            assert f == pytest.approx(objective(one.coef_, one.intercept_, X[g], ytr, C), rel=1e-6)
            Z = X[g] @ W.T + b
            P = np.exp(Z - Z.max(1, keepdims=True))
            np.testing.assert_allclose(P / P.sum(1, keepdims=True), one.predict_proba(X[g]),
                                       atol=2e-3)  # fmt: skip
    # Per-layer C values are allowed, and a warm start from the solution is already done.
    per_layer = fit_grid(X, ytr, [[1.0], [10.0]], 10, dtype="float64", options=tight)
    torch.testing.assert_close(per_layer.coef[0, 0], res.coef[0, 1], atol=2e-3, rtol=1e-3)
    init = torch.cat([res.coef, res.intercept[..., None]], -1)
    warm = fit_grid(X, ytr, Cs, 10, dtype="float64", init=init, options=tight)
    assert int(warm.n_iter.max()) <= 2


def synthetic(n, seed, informative=1):
    """Layer 0 is noise; layer 1 separates 3 classes (so a good probe finds layer 1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    noise = rng.normal(size=(n, 8))
    signal = rng.normal(size=(n, 8)) * 0.5
    signal[np.arange(n), y] += 2.0 * informative
    return Features(np.stack([noise, signal]).astype(np.float32), y)


def run_protocol(**kw):
    tr, va, te = synthetic(600, 0), synthetic(200, 1), synthetic(300, 2)
    rows = probe_lbfgs(
        tr,
        va,
        te,
        [0, 1],
        meta=dict(model="m", objective="ar", dataset="syn", site_kind="ln_1"),
        sites=["blocks.0.ln_1", "ln_f"],
        protocol=Protocol(**kw),
    ).rows
    return to_frame(rows), (tr, va, te)


def test_protocol_rows_selection_and_ci():
    df, _ = run_protocol()
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df.standardize.all() and set(df.preprocess) == {"standardize"}  # the default
    test = df[(df.split == "test") & (df.metric == "accuracy")].set_index("layer")
    assert test.loc[1, "value"] > 0.9 > 0.5 > test.loc[0, "value"]
    assert (test.ci_low <= test.value).all() and (test.value <= test.ci_high).all()
    val = df[(df.split == "val") & (df.metric == "accuracy")]
    for _, v in val.groupby("layer"):  # the whole sweep is on record: the path, then 4 refined
        path = v.iloc[:-4]
        assert path.C.tolist() == sorted(path.C) and path.C.iloc[0] == 1e-3
        if len(path) < 7:  # it left the path after 2 values without a better val accuracy
            assert path.value.iloc[-2:].max() <= path.value.iloc[:-2].max()
    chosen = val[val.selected.astype(bool)]
    assert len(chosen) == 2
    for layer, row in chosen.set_index("layer").iterrows():
        layer_val = val[val.layer == layer]
        assert row["value"] == layer_val.value.max()  # chosen on validation accuracy
        assert row["C"] == test.loc[layer, "C"]  # and that C is the one refit


def test_protocol_path_patience():
    full, _ = run_protocol(patience=100)
    val = full[(full.split == "val") & (full.metric == "accuracy")]
    assert len(val) == 2 * (7 + 4)  # no early stop: every C of the grid, then 4 refined
    short, _ = run_protocol(patience=1)
    assert len(short[(short.split == "val") & (short.metric == "accuracy")]) < len(val)


def test_test_split_never_chooses_anything():
    df, (tr, va, te) = run_protocol()
    shuffled = Features(te.X, np.random.default_rng(9).permutation(te.y))
    rows = probe_lbfgs(tr, va, shuffled, [0, 1], meta={}, sites=["a", "b"]).rows
    df2 = to_frame(rows)
    pick = lambda d: d[(d.split == "test") & (d.metric == "accuracy")].C.tolist()  # noqa: E731
    assert pick(df) == pick(df2)


def test_sklearn_backend_runs_the_same_protocol():
    ours, _ = run_protocol()
    theirs, _ = run_protocol(backend="sklearn")
    a = ours[(ours.split == "test") & (ours.metric == "accuracy")].value.to_numpy()
    b = theirs[(theirs.split == "test") & (theirs.metric == "accuracy")].value.to_numpy()
    assert np.abs(a - b).max() <= 0.01


def test_cuml_mapping_and_missing_gpu():
    assert cuml_regularisation(0.5, 1000, accepts_normalized=True) == {
        "C": 0.5,
        "penalty_normalized": True,
    }
    assert cuml_regularisation(0.5, 1000, accepts_normalized=False) == {"C": 500.0}
    if not torch.cuda.is_available():
        with pytest.raises(IGPTError, match="cuML|GPU"):
            LogisticProbe(backend="cuml").fit(np.eye(4), [0, 1, 0, 1])
        with pytest.raises(IGPTError, match="CPU-only build|no visible GPU"):
            LogisticProbe(device="cuda").fit(np.eye(4), [0, 1, 0, 1])


@pytest.mark.gpu
def test_cuml_backend_objective_matches_sklearn(digits):
    pytest.importorskip("cuml")
    Xtr, ytr, _, _ = digits
    for C in (0.01, 1.0):
        m = LogisticProbe(C=C, backend="cuml", tol=1e-8).fit(Xtr, ytr)
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(Xtr, ytr)
        f_c = objective(m.coef_, m.intercept_, Xtr, ytr, C)
        f_r = objective(ref.coef_, ref.intercept_, Xtr, ytr, C)
        assert abs(f_c - f_r) <= 1e-3 * f_r


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Features(np.full((1, 4, 2), np.nan, np.float32), np.arange(4)), "NaN"),
        (lambda: Features(np.zeros((1, 4, 2), np.float32), np.arange(3)), "labels"),
        (lambda: Features(np.zeros((1, 0, 2), np.float32), np.arange(0)), "no rows"),
        (lambda: LogisticProbe().fit(np.eye(3), [1, 1, 1]), "one class"),
        (lambda: LogisticProbe(C=0).fit(np.eye(2), [0, 1]), "C must be a positive"),
        (lambda: LogisticProbe(C=-1.0).fit(np.eye(2), [0, 1]), "C must be a positive"),
        (lambda: LogisticProbe(backend="magic").fit(np.eye(2), [0, 1]), "unknown backend"),
        (
            lambda: probe_lbfgs(
                synthetic(50, 0),
                synthetic(20, 1),
                synthetic(20, 2),
                [0, 1],
                meta={},
                sites=["a", "b"],
                protocol=Protocol(Cs=[1.0, -1.0]),
            ),
            "C must be > 0",
        ),
    ],
)
def test_bad_input(make, match):
    with pytest.raises(IGPTError, match=match):
        make()


def test_probe_settings():
    """One object for what probe_model does: copies with changes, bad names and methods
    refused at once, a caller's list of layers copied into a tuple."""
    from igpt_eval.defaults import SAMPLE_TEST
    from igpt_eval.studies.settings import ProbeSettings

    s = ProbeSettings()
    assert (s.method, s.site, s.test_size, s.pixels) == ("lbfgs", "ln_1", SAMPLE_TEST, True)
    layers = [0, 4]
    t = s.replace(method="sgd", layers=layers, test_size=None)
    layers.append(8)
    assert t.layers == (0, 4) and t.sizes["test"] is None and s.method == "lbfgs"
    assert s.replace() is s
    with pytest.raises(TypeError, match="no probe setting named 'test_sise'"):
        s.replace(test_sise=10)
    with pytest.raises(IGPTError, match="unknown probe method 'adam'"):
        s.replace(method="adam")


def test_nan_or_infinite_features_to_the_estimator():
    X = np.eye(4)
    X[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity|NaN"):
        LogisticProbe().fit(X, [0, 1, 0, 1])


def test_fit_path_reaches_the_same_optima_as_cold_solves():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2, 300, 6))
    y = (X[0, :, 0] + 0.5 * X[1, :, 1] + 0.3 * rng.normal(size=300) > 0).astype(int)
    y += (X[0, :, 2] > 1).astype(int)  # three classes
    Cs = [10.0, 0.01, 1.0]  # out of order on purpose: columns follow Cs
    kw = dict(dtype="float64", options=LBFGSOptions(tol=1e-8, max_iter=5000))
    cold, path = fit_grid(X, y, Cs, 3, **kw), fit_path(X, y, Cs, 3, **kw)
    assert bool(path.converged.all()) and bool(cold.converged.all())
    np.testing.assert_allclose(path.coef, cold.coef, atol=1e-5)
    np.testing.assert_allclose(path.loss, cold.loss, rtol=1e-10)
    # warm starts along the path: fewer iterations in all than cold solves
    assert int(path.n_iter.sum()) < int(cold.n_iter.sum())


def collinear_features(seed=0, n=1500, rank=12, d=64, K=5):
    """Features that are a linear function of a few latent causes, as a transformer's pooled
    embeddings are of the colour histogram: a near-singular covariance (condition ~1e8)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, rank)) * np.geomspace(1, 0.01, rank)
    X = latent @ rng.normal(size=(rank, d)) + 1e-4 * rng.normal(size=(n, d))
    y = (latent @ rng.normal(size=(rank, K)) + 0.3 * rng.normal(size=(n, K))).argmax(1)
    return (X - X.mean(0)) / X.std(0), y


def test_preconditioning_converges_on_collinear_features_to_the_reference_optimum():
    from igpt_eval.probes.lbfgs import fit_lbfgs
    from igpt_eval.probes.logistic import solver_C

    X, y = collinear_features()
    K = 5
    C = torch.tensor([[1.0, 1000.0]], dtype=torch.float64)
    args = (torch.tensor(X[None]), torch.tensor(y), solver_C(C, K), K)
    pre = fit_lbfgs(*args)
    plain = fit_lbfgs(*args, options=LBFGSOptions(precondition=False))
    assert bool(pre.converged.all())
    assert int(pre.n_iter.sum()) * 3 < int(plain.n_iter.sum())
    for j, c in enumerate((1.0, 1000.0)):
        ref = LogisticRegression(C=c, solver="newton-cholesky", tol=1e-8, max_iter=100).fit(X, y)
        f_ref = objective(ref.coef_, ref.intercept_, X, y, c)
        f_pre = objective(pre.coef[0, j].numpy(), pre.intercept[0, j].numpy(), X, y, c)
        f_plain = objective(plain.coef[0, j].numpy(), plain.intercept[0, j].numpy(), X, y, c)
        assert abs(f_pre - f_ref) <= 3e-5 * f_ref  # the stopping test is max |∇f| <= 1e-4
        assert f_plain >= f_pre - 1e-9  # the plain solver is never better
    # ... and at weak regularisation its gradient test passes short of the optimum: on
    # collinear features a small gradient does not mean a small error
    assert f_plain - f_ref > 1e-4 * f_ref


def test_a_warm_start_at_weaker_regularisation_still_reaches_the_optimum():
    """Along the C path the previous solution can pass the gradient test at the next, weaker
    C while far from its optimum (collinear features are flat there); the gap test makes the
    solver move on, in float32 as the protocol runs it."""
    from igpt_eval.probes.lbfgs import fit_lbfgs
    from igpt_eval.probes.logistic import solver_C

    X, y = collinear_features(seed=2)
    K = 5
    Xt, yt = torch.tensor(X[None], dtype=torch.float32), torch.tensor(y)
    C = lambda c: solver_C(torch.tensor([[c]], dtype=torch.float64), K)  # noqa: E731
    prev = fit_lbfgs(Xt, yt, C(100.0), K)
    init = torch.cat([prev.coef, prev.intercept[..., None]], -1)
    warm = fit_lbfgs(Xt, yt, C(1000.0), K, init=init)
    grad_only = fit_lbfgs(Xt, yt, C(1000.0), K, init=init, options=LBFGSOptions(gap_tol=None))
    ref = LogisticRegression(C=1000.0, solver="newton-cholesky", tol=1e-8, max_iter=100).fit(X, y)
    f_ref = objective(ref.coef_, ref.intercept_, X, y, 1000.0)

    def gap(r):  # objective above the reference optimum
        w, b = r.coef[0, 0].double().numpy(), r.intercept[0, 0].double().numpy()
        return objective(w, b, X, y, 1000.0) - f_ref

    assert bool(warm.converged.all())
    assert int(grad_only.n_iter) < int(warm.n_iter)
    assert gap(warm) <= 1e-5 * f_ref
    assert gap(grad_only) > 10 * gap(warm)  # the gradient test alone stopped short


def test_sklearn_backend_is_the_converged_reference_on_collinear_features():
    from igpt_eval.probes.backends import sklearn_solver

    X, y = collinear_features(seed=1)
    assert sklearn_solver(5, X.shape[1]) == "newton-cholesky"
    assert sklearn_solver(10, 1024) == "lbfgs"  # a Hessian too large to factor
    ours = LogisticProbe(C=1000.0).fit(X, y)
    ref = LogisticProbe(C=1000.0, backend="sklearn").fit(X, y)
    assert ours.converged_ and ref.converged_
    f_ours = objective(ours.coef_, ours.intercept_, X, y, 1000.0)
    f_ref = objective(ref.coef_, ref.intercept_, X, y, 1000.0)
    assert abs(f_ours - f_ref) <= 1e-4 * f_ref
    assert (ours.predict(X) == ref.predict(X)).mean() >= 0.99
    # a capped solve is recorded as unconverged (scikit-learn's warning becomes data)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and nothing reaches the console
        capped = LogisticProbe(C=1000.0, backend="sklearn", max_iter=2).fit(X, y)
    assert not capped.converged_


def test_path_start_follows_the_solution_path():
    from igpt_eval.probes.logistic import path_start

    W = lambda c: torch.full((2, 3), float(np.log10(c)))  # noqa: E731  a path linear in log C
    Cs, sols = [0.1, 1.0, 10.0], [W(0.1), W(1.0), W(10.0)]
    for C in (100.0, 0.01, 3.0, 0.2, 10.0):  # past either end, between points, on one
        torch.testing.assert_close(path_start(Cs, sols, C), W(C))
    one = path_start([1.0], [W(1.0)], 100.0)  # a single solution: itself, as a copy
    torch.testing.assert_close(one, W(1.0))
    assert one.data_ptr() != sols[1].data_ptr()


def test_padded_layout_round_trips_unequal_blocks():
    from igpt_eval.probes.lbfgs import _Layout

    layer = torch.tensor([0, 0, 0, 2, 5, 5])  # sets with 3, 1 and 2 live problems
    lay = _Layout(layer)
    assert lay.sets.tolist() == [0, 2, 5] and lay.c == 3 and not lay.uniform
    T = torch.arange(6 * 4 * 2, dtype=torch.float32).view(6, 4, 2)
    padded = lay.pad(T)  # (sets, c·K, m), zero rows where a set has fewer problems
    assert padded.shape == (3, 12, 2) and padded[1, 4:].abs().sum() == 0
    torch.testing.assert_close(lay.unpad(padded, 4), T)
    even = _Layout(torch.tensor([1, 1, 3, 3]))
    U = torch.randn(4, 4, 2)
    assert even.uniform and even.pad(U).data_ptr() == U.data_ptr()  # a view, no copy
