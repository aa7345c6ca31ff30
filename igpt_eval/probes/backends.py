"""Solver backends behind :class:`~igpt_eval.probes.logistic.LogisticProbe`.

Every backend minimises the same objective (scikit-learn's ``LogisticRegression(C)``,
multinomial, L2, free intercept) and returns the same things, so a probe's numbers do not
depend on which one ran. ``torch`` is the batched, preconditioned L-BFGS of :mod:`.lbfgs`
(CPU or GPU); ``sklearn`` is scikit-learn, the reference; ``cuml`` is RAPIDS cuML on a CUDA
GPU.

scikit-learn's default lbfgs does not converge on transformer features at weak
regularisation: they are collinear (condition numbers of 1e6–1e8), and at C = 1000 it stops
at 1,000 iterations with the objective still 10% above its minimum. So the reference uses
scikit-learn's ``newton-cholesky`` solver where the Hessian is small enough to factor
(K·(d+1) ≤ :data:`NEWTON_MAX_PARAMS`): exact Newton steps, converged in about ten
iterations whatever the conditioning. Where the Hessian is near-singular (a model's pooled
embeddings at weak regularisation) scikit-learn itself falls back to its lbfgs, which needs
thousands of iterations there (3,364 and 5,566 on the shipped AR model's layer 0 at C = 215
and 2,154): hence the protocol's cap of 10,000. Problems too large to factor use lbfgs.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from igpt_eval.errors import IGPTError

BACKENDS = ("torch", "sklearn", "cuml")
#: The largest K·(d+1) for which the sklearn backend uses Newton-Cholesky (a float64 Hessian
#: of at most 128 MiB, formed in ~n·(K·d)² flops per iteration).
NEWTON_MAX_PARAMS = 4096


@dataclass
class Fit:
    """One solved problem: weights (K, d), intercept (K,), and its convergence record."""

    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int
    grad_norm: float  # max |∇f| at the end (NaN where the backend does not expose it)
    converged: bool


def torch_dtype(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise IGPTError(f"dtype must be 'float32' or 'float64', got {name!r}")
    return getattr(torch, name)


def objective(coef, intercept, X, y, C) -> float:
    """scikit-learn's per-sample objective, in float64 numpy (for comparing backends).

    Multinomial: ``mean CE + ||W||²/(2Cn)``. Two classes: scikit-learn's binomial form on
    the logit difference ``w = W[1] - W[0]``, ``mean CE + ||w||²/(2Cn)``.
    """
    X = np.asarray(X, dtype=np.float64)
    coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    Z = X @ coef.T + intercept
    Z -= Z.max(1, keepdims=True)
    lse = np.log(np.exp(Z).sum(1))
    n = len(X)
    ce = float((lse - Z[np.arange(n), y]).mean())
    w = coef[1] - coef[0] if len(coef) == 2 else coef
    return ce + float((w**2).sum()) / (2 * C * n)


def sklearn_solver(K: int, d: int) -> str:
    """The scikit-learn solver of the sklearn backend for K classes and d features."""
    return "newton-cholesky" if K * (d + 1) <= NEWTON_MAX_PARAMS else "lbfgs"


def fit_sklearn(X, y, C, K, *, tol, max_iter) -> Fit:
    from scipy.linalg import LinAlgWarning
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    solver = sklearn_solver(K, X.shape[1])
    # Convergence is data here (n_iter, converged), not a warning on the console: record
    # scikit-learn's ConvergenceWarning (the cap was reached, by Newton or by the lbfgs it
    # falls back to on a near-singular Hessian) and silence the fallback notice.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("ignore", LinAlgWarning)
        m = LogisticRegression(C=C, tol=tol, max_iter=max_iter, solver=solver).fit(X, y)
    capped = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    coef, b = m.coef_, m.intercept_
    if K == 2:  # scikit-learn stores one logit for two classes: expand to the softmax form
        coef = np.vstack([-coef / 2, coef / 2])
        b = np.array([-b[0] / 2, b[0] / 2])
    n_iter = int(np.max(m.n_iter_))
    return Fit(coef, b, n_iter, float("nan"), not capped and n_iter < max_iter)


def cuml_regularisation(C: float, n: int, accepts_normalized: bool) -> dict:
    """Map scikit-learn's C onto cuML's arguments.

    cuML's quasi-Newton solver minimises ``mean loss + ½·(1/C)·||w||²``; with
    ``penalty_normalized=True`` (cuML >= 23.x) the penalty is divided by the sample size,
    which is exactly scikit-learn's ``mean CE + ||w||²/(2·C·n)``: C carries over unchanged.
    Older cuML has no normalisation, so the same objective needs ``C·n``.
    """
    if accepts_normalized:
        return {"C": C, "penalty_normalized": True}
    return {"C": C * n}


def fit_cuml(X, y, C, K, *, tol, max_iter) -> Fit:
    try:
        from cuml.linear_model import LogisticRegression
    except ImportError:
        raise IGPTError(
            "backend 'cuml' needs RAPIDS cuML on a CUDA GPU: pip install 'igpt-eval[gpu]'"
        ) from None
    if not torch.cuda.is_available():
        raise IGPTError("backend 'cuml' needs a CUDA GPU, and none is available")
    accepts = "penalty_normalized" in inspect.signature(LogisticRegression).parameters
    m = LogisticRegression(
        tol=tol, max_iter=max_iter, **cuml_regularisation(C, len(X), accepts)
    ).fit(np.asarray(X, np.float32), np.asarray(y))
    coef, b = np.asarray(m.coef_), np.asarray(m.intercept_).ravel()
    if coef.shape[0] == 1 and K == 2:  # sigmoid form for two classes, as scikit-learn
        coef = np.vstack([-coef / 2, coef / 2])
        b = np.array([-b[0] / 2, b[0] / 2])
    n_iter = int(np.max(np.asarray(m.n_iter_)))
    return Fit(coef, b, n_iter, float("nan"), n_iter < max_iter)
