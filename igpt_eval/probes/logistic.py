"""``LogisticProbe``: a linear probe with scikit-learn's API and a batched torch solver.

The estimator solves exactly ``sklearn.linear_model.LogisticRegression(C=…)``'s problem
(multinomial, L2 on the weights, free intercept) with a choice of backend, and records how
the solver ended (``n_iter_``, ``grad_norm_``, ``converged_``) instead of warning. Probing
many layers × C values at once goes through :func:`fit_grid`, which hands them all to one
batched L-BFGS call.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from igpt_eval.errors import IGPTError
from igpt_eval.model.devices import resolve_device
from igpt_eval.probes.backends import (
    BACKENDS,
    fit_cuml,
    fit_sklearn,
    torch_dtype,
)
from igpt_eval.probes.lbfgs import LBFGSOptions, LBFGSResult, fit_lbfgs


def solver_C(C, n_classes: int):
    """The C our softmax solver needs to match scikit-learn's objective at ``C``.

    With two classes scikit-learn fits one logit (binomial); the symmetric softmax optimum
    ``W = [-w/2, w/2]`` has half the squared norm, so the same problem is softmax at C/2.
    """
    return C / 2 if n_classes == 2 else C


def _tensor(X, device, dtype) -> torch.Tensor:
    """Features (G, N, d) as a tensor of ``dtype`` on ``device`` (a read-only array is copied)."""
    if not isinstance(X, torch.Tensor):
        X = torch.from_numpy(
            np.array(X, copy=True) if not np.asarray(X).flags.writeable else np.asarray(X)
        )
    return X.to(resolve_device(device), torch_dtype(dtype))


def fit_grid(
    X,
    y,
    Cs,
    n_classes: int,
    *,
    device="cpu",
    dtype="float32",
    init: torch.Tensor | None = None,
    options: LBFGSOptions | None = None,
) -> LBFGSResult:
    """Solve every feature set × every C in one batched L-BFGS call.

    ``X`` (G, N, d) array or tensor; ``Cs`` (nC,) shared by all sets or (G, nC) per set;
    ``options`` the solver's (:class:`~igpt_eval.probes.lbfgs.LBFGSOptions`).
    Returns an :class:`~igpt_eval.probes.lbfgs.LBFGSResult` of shape (G, nC, …).
    """
    X = _tensor(X, device, dtype)
    dt = X.dtype
    C = torch.as_tensor(np.asarray(Cs, dtype=np.float64), dtype=dt)
    if C.ndim == 1:
        C = C.expand(X.shape[0], -1).contiguous()
    y = torch.tensor(np.asarray(y), dtype=torch.long)
    return fit_lbfgs(X, y, solver_C(C, n_classes), n_classes, init=init, options=options)


def fit_path(
    X,
    y,
    Cs,
    n_classes: int,
    *,
    device="cpu",
    dtype="float32",
    options: LBFGSOptions | None = None,
) -> LBFGSResult:
    """Solve every feature set × every C, walking the C path from strong to weak
    regularisation: each C's problems (one per feature set, batched) start from the solutions
    so far (:func:`path_start`), which are close, so most of the path costs a fraction of a
    cold solve.
    Same result layout as :func:`fit_grid`, columns in the order of ``Cs``."""
    X = _tensor(X, device, dtype)  # once for the whole path
    Cs = np.asarray(Cs, dtype=np.float64)
    order = np.argsort(Cs)
    parts: list[LBFGSResult | None] = [None] * len(Cs)
    done_C, done_W = [], []
    for j in order:
        init = path_start(done_C, done_W, Cs[j]) if done_W else None
        r = fit_grid(X, y, [Cs[j]], n_classes, device=device, dtype=dtype, init=init,
                     options=options)  # fmt: skip
        parts[j] = r
        done_C.append(Cs[j])
        done_W.append(torch.cat([r.coef, r.intercept[..., None]], -1))  # (G, 1, K, d+1)
    return LBFGSResult(
        *(torch.cat([getattr(p, f) for p in parts], 1) for f in LBFGSResult.__dataclass_fields__)
    )


def path_start(Cs, solutions, C: float) -> torch.Tensor:
    """A warm start at ``C`` from ``solutions`` (tensors of one shape) already found at
    ``Cs``: the solution path ``W(log C)`` followed along the line through the solution
    nearest in C and its neighbour on C's side (the other side past the end of the path).
    Between grid points that interpolates; past the last one it is the secant step from the
    last two. At weak regularisation the solution moves far between grid points, and the
    nearest solution alone left L-BFGS most of that way to walk: on the shipped AR model's
    embeddings, 1,846 iterations from C = 100's solution to C = 1000's, 950 from the secant.
    A warm start changes where a fit begins, never the optimum it converges to."""
    logC = np.log(np.asarray(Cs, dtype=np.float64))
    order = np.argsort(logC)
    logC, solutions = logC[order], [solutions[i] for i in order]
    x = float(np.log(C))
    i = int(np.argmin(np.abs(logC - x)))
    side = 1 if x >= logC[i] else -1
    j = i + side if 0 <= i + side < len(logC) else i - side
    if not 0 <= j < len(logC) or logC[j] == logC[i]:
        return solutions[i].clone()
    w = (x - logC[i]) / (logC[j] - logC[i])
    return solutions[i] + float(w) * (solutions[j] - solutions[i])


def probe_head(Z, y, C: float, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(W [n_classes, d], b [n_classes])`` of the L2 logistic probe at ``C`` on features
    ``Z [n, d]`` with labels ``0..n_classes-1``: the probe a fine-tuning head can start from
    (:data:`igpt_eval.train.finetune.HeadFitter`)."""
    r = fit_grid(np.asarray(Z, np.float32)[None], y, [C], n_classes)
    return r.coef[0, 0].double().numpy(), r.intercept[0, 0].double().numpy()


class LogisticProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression with L2 penalty, scikit-learn's objective.

    Parameters
    ----------
    C : inverse regularisation strength, as in scikit-learn.
    backend : ``"torch"`` (batched L-BFGS, CPU or GPU), ``"sklearn"`` or ``"cuml"``.
    max_iter, tol : stopping rule: max-abs gradient <= tol, as scipy/scikit-learn; the torch
        backend also requires an estimated distance to the optimum below
        :data:`igpt_eval.probes.lbfgs.GAP_TOL` nats.
    device : ``"cpu"``, ``"cuda"``, or ``"auto"`` (torch backend).
    dtype : ``"float32"`` or ``"float64"`` (torch backend).

    Fitted attributes: ``classes_``, ``coef_`` (n_classes, d) — two classes keep the softmax
    form ``[-w/2, w/2]`` — ``intercept_``, ``n_iter_``, ``grad_norm_``, ``converged_``,
    ``n_features_in_``.
    """

    def __init__(
        self,
        C: float = 1.0,
        *,
        backend: str = "torch",
        max_iter: int = 1000,
        tol: float = 1e-4,
        device: str = "cpu",
        dtype: str = "float32",
    ):
        self.C = C
        self.backend = backend
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.dtype = dtype

    def fit(self, X, y):
        """Fit on features ``X`` (n, d) and labels ``y``; returns self."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        if not (np.isscalar(self.C) and self.C > 0):
            raise IGPTError(f"C must be a positive number, got {self.C!r}")
        if self.backend not in BACKENDS:
            raise IGPTError(f"unknown backend {self.backend!r}; choose one of {BACKENDS}")
        self.classes_, yi = np.unique(y, return_inverse=True)
        K = len(self.classes_)
        if K < 2:
            raise IGPTError(
                f"a probe needs at least 2 classes; the labels hold only one class "
                f"({self.classes_[0]!r})"
            )
        if self.backend == "torch":
            r = fit_grid(
                X[None],
                yi,
                [self.C],
                K,
                device=self.device,
                dtype=self.dtype,
                options=LBFGSOptions(tol=self.tol, max_iter=self.max_iter),
            )
            self.coef_ = r.coef[0, 0].double().numpy()
            self.intercept_ = r.intercept[0, 0].double().numpy()
            self.n_iter_ = int(r.n_iter[0, 0])
            self.grad_norm_ = float(r.grad_norm[0, 0])
            self.converged_ = bool(r.converged[0, 0])
        else:
            fit = (fit_sklearn if self.backend == "sklearn" else fit_cuml)(
                X, yi, self.C, K, tol=self.tol, max_iter=self.max_iter
            )
            self.coef_, self.intercept_ = fit.coef, fit.intercept
            self.n_iter_, self.grad_norm_, self.converged_ = (
                fit.n_iter,
                fit.grad_norm,
                fit.converged,
            )
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "coef_")

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X @ self.coef_.T + self.intercept_  # (n, n_classes)

    def decision_function(self, X) -> np.ndarray:
        """Logits (n, n_classes); for two classes, scikit-learn's (n,) positive-class score."""
        Z = self._logits(X)
        return Z[:, 1] - Z[:, 0] if Z.shape[1] == 2 else Z

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, n_classes), a softmax of the logits."""
        Z = self._logits(X)
        Z = np.exp(Z - Z.max(1, keepdims=True))
        return Z / Z.sum(1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row."""
        Z = self._logits(X)
        return self.classes_[Z.argmax(1)]
