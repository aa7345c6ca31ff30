"""The linear-probe protocol (DESIGN §5): choose on validation, refit, report test once.

For every layer at once:

1. *coarse*: fit on ``train`` for each C of a log grid (1e-3 … 1e3), score on ``val``;
2. *refine*: around each layer's best coarse C, four more values a third of a decade apart,
   warm-started from that solution;
3. *select*: the C with the best validation accuracy (ties: lower validation loss);
4. *refit* on ``train + val`` at the chosen C, warm-started, and score ``test`` once, with a
   bootstrap 95% interval.

The test split is never used to choose anything. Every fit is a row of the results table,
so the whole regularisation sweep is on record (rows with ``split="val"``), not only its
winner (``selected=True``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from igpt_eval.analysis import bootstrap_accuracy_ci
from igpt_eval.errors import IGPTError
from igpt_eval.probes.backends import BACKENDS, resolve_device
from igpt_eval.probes.logistic import LogisticProbe, fit_grid

COARSE_CS = 10.0 ** np.arange(-3, 4)  # 1e-3 … 1e3
REFINE_STEPS = 10.0 ** np.array([-2 / 3, -1 / 3, 1 / 3, 2 / 3])


@dataclass
class Features:
    """One split's features for G layers: ``X`` (G, N, d) float32 and labels ``y`` (N,)."""

    X: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        if self.X.ndim != 3:
            raise IGPTError(f"features must be (layers, rows, dim), got shape {self.X.shape}")
        if len(self.y) != self.X.shape[1]:
            raise IGPTError(
                f"{self.X.shape[1]} feature rows but {len(self.y)} labels; the cache and "
                "its labels do not belong together"
            )
        if self.X.shape[1] == 0:
            raise IGPTError("a split has no rows to probe")
        if not np.isfinite(self.X).all():
            raise IGPTError("features contain NaN or infinite values; re-extract the cache")


@dataclass
class _Solution:
    coef: torch.Tensor  # (G, nC, K, d)
    intercept: torch.Tensor  # (G, nC, K)
    n_iter: np.ndarray  # (G, nC)
    converged: np.ndarray
    grad_norm: np.ndarray

    def init(self, pick: np.ndarray) -> torch.Tensor:
        """Warm start (G, 1, K, d+1) from column ``pick[g]`` of each layer."""
        g = np.arange(len(pick))
        return torch.cat([self.coef[g, pick], self.intercept[g, pick, :, None]], -1)[:, None]


def _solve(X, y, C, K, backend, *, device, dtype, tol, max_iter, init=None) -> _Solution:
    """All layers × C values: one batched call (torch), or problem by problem (others)."""
    if backend == "torch":
        r = fit_grid(X, y, C, K, device=device, dtype=dtype, tol=tol, max_iter=max_iter, init=init)
        return _Solution(
            r.coef, r.intercept, r.n_iter.numpy(), r.converged.numpy(), r.grad_norm.double().numpy()
        )
    G, nC = C.shape
    d = X.shape[2]
    coef, b = torch.zeros(G, nC, K, d, dtype=torch.float64), torch.zeros(G, nC, K)
    n_iter, conv, gn = np.zeros((G, nC), int), np.zeros((G, nC), bool), np.full((G, nC), np.nan)
    for g in range(G):
        for c in range(nC):
            p = LogisticProbe(C=float(C[g, c]), backend=backend, tol=tol, max_iter=max_iter)
            p.fit(X[g], y)
            coef[g, c], b[g, c] = torch.from_numpy(p.coef_), torch.from_numpy(p.intercept_)
            n_iter[g, c], conv[g, c] = p.n_iter_, p.converged_
    return _Solution(coef, b, n_iter, conv, gn)


def _evaluate(X, y, sol: _Solution, device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Accuracy (G, nC), mean cross-entropy (G, nC) and correctness (G, nC, N)."""
    dev = resolve_device(device)
    Xt = torch.as_tensor(X, device=dev, dtype=torch.float32)
    G, nC, K, d = sol.coef.shape
    W = sol.coef.to(dev, torch.float32).permute(0, 3, 1, 2).reshape(G, d, nC * K)
    Z = torch.bmm(Xt, W).view(G, -1, nC, K) + sol.intercept.to(dev, torch.float32)[:, None]
    yt = torch.as_tensor(y, device=dev, dtype=torch.long)
    ce = torch.logsumexp(Z, -1) - Z.gather(-1, yt[None, :, None, None].expand(G, -1, nC, 1))[..., 0]
    correct = (Z.argmax(-1) == yt[None, :, None]).permute(0, 2, 1)  # (G, nC, N)
    return (correct.float().mean(-1).cpu().numpy(), ce.mean(1).cpu().numpy(), correct.cpu().numpy())


def probe_lbfgs(
    train: Features,
    val: Features,
    test: Features,
    layers: list[int],
    *,
    meta: dict,
    sites: list[str],
    Cs=COARSE_CS,
    refine: bool = True,
    backend: str = "torch",
    device: str = "cpu",
    dtype: str = "float32",
    tol: float = 1e-4,
    max_iter: int = 1000,
    standardize: bool = False,
    n_boot: int = 10_000,
    seed: int = 0,
) -> list[dict]:
    """Run the protocol on every layer; returns tidy result rows (see :mod:`igpt_eval.results`).

    ``meta`` fills the model/objective/dataset columns; ``sites`` names each layer's site.
    """
    if backend not in BACKENDS:
        raise IGPTError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    Cs = np.asarray(Cs, dtype=np.float64)
    if Cs.ndim != 1 or not (Cs > 0).all():
        raise IGPTError("every C must be > 0")
    classes = np.unique(train.y)
    if len(classes) < 2:
        raise IGPTError("the training labels hold a single class; a probe needs at least two")
    K = len(classes)
    y_tr, y_va, y_te = (np.searchsorted(classes, s.y) for s in (train, val, test))
    for name, s, yy in (("val", val, y_va), ("test", test, y_te)):
        if not np.array_equal(classes[np.clip(yy, 0, K - 1)], s.y):
            raise IGPTError(f"the {name} split has labels the training split never shows")
    Xtr, Xva, Xte = train.X, val.X, test.X
    if standardize:  # statistics from train only, applied to every split
        mu = Xtr.mean(1, keepdims=True)
        sd = Xtr.std(1, keepdims=True) + 1e-6
        Xtr, Xva, Xte = ((x - mu) / sd for x in (Xtr, Xva, Xte))
    G = len(layers)
    opts = dict(device=device, dtype=dtype, tol=tol, max_iter=max_iter)
    base = dict(meta, probe="lbfgs", backend=backend, standardize=standardize, seed=seed, lr=np.nan)
    rows: list[dict] = []

    def record(stage_C, sol, acc, loss, seconds, n):
        for g in range(G):
            for c in range(stage_C.shape[1]):
                common = dict(
                    base,
                    split="val",
                    layer=layers[g],
                    site=sites[g],
                    C=float(stage_C[g, c]),
                    n_iter=int(sol.n_iter[g, c]),
                    converged=bool(sol.converged[g, c]),
                    grad_norm=float(sol.grad_norm[g, c]),
                    seconds=seconds,
                    n_train=n,
                    n_eval=len(y_va),
                    selected=False,
                )
                rows.append(dict(common, metric="accuracy", value=float(acc[g, c])))
                rows.append(dict(common, metric="loss", value=float(loss[g, c])))

    t0 = time.perf_counter()
    C1 = np.broadcast_to(Cs, (G, len(Cs))).copy()
    sol1 = _solve(Xtr, y_tr, C1, K, backend, **opts)
    acc1, loss1, _ = _evaluate(Xva, y_va, sol1, device)
    record(C1, sol1, acc1, loss1, time.perf_counter() - t0, len(y_tr))
    all_C, all_acc, all_loss, sols = [C1], [acc1], [loss1], [(sol1, C1)]
    best1 = _best(acc1, loss1)
    if refine:
        t0 = time.perf_counter()
        C2 = C1[np.arange(G), best1][:, None] * REFINE_STEPS[None]
        init = sol1.init(best1).expand(-1, C2.shape[1], -1, -1).contiguous()
        sol2 = _solve(Xtr, y_tr, C2, K, backend, init=init, **opts)
        acc2, loss2, _ = _evaluate(Xva, y_va, sol2, device)
        record(C2, sol2, acc2, loss2, time.perf_counter() - t0, len(y_tr))
        all_C.append(C2)
        all_acc.append(acc2)
        all_loss.append(loss2)
        sols.append((sol2, C2))
    C_all = np.concatenate(all_C, 1)
    best = _best(np.concatenate(all_acc, 1), np.concatenate(all_loss, 1))
    C_best = C_all[np.arange(G), best]
    for g in range(G):  # mark the chosen validation rows
        for r in rows:
            if r["layer"] == layers[g] and r["split"] == "val" and r["C"] == C_best[g]:
                r["selected"] = True

    # Refit on train + val at the chosen C, warm-started from the chosen train solution.
    coef = torch.cat([sol.coef for sol, _ in sols], 1)  # (G, all C, K, d)
    icpt = torch.cat([sol.intercept for sol, _ in sols], 1)
    g_idx = np.arange(G)
    init = torch.cat([coef[g_idx, best], icpt[g_idx, best, :, None]], -1)[:, None]
    t0 = time.perf_counter()
    X_fit = np.concatenate([Xtr, Xva], 1)
    y_fit = np.concatenate([y_tr, y_va])
    final = _solve(X_fit, y_fit, C_best[:, None], K, backend, init=init, **opts)
    seconds = time.perf_counter() - t0
    acc, loss, correct = _evaluate(Xte, y_te, final, device)
    for g in range(G):
        lo, hi = bootstrap_accuracy_ci(correct[g, 0], n_boot=n_boot, seed=seed)
        common = dict(
            base,
            split="test",
            layer=layers[g],
            site=sites[g],
            C=float(C_best[g]),
            n_iter=int(final.n_iter[g, 0]),
            converged=bool(final.converged[g, 0]),
            grad_norm=float(final.grad_norm[g, 0]),
            seconds=seconds,
            n_train=len(y_fit),
            n_eval=len(y_te),
            selected=True,
        )
        rows.append(dict(common, metric="accuracy", value=float(acc[g, 0]), ci_low=lo, ci_high=hi))
        rows.append(dict(common, metric="loss", value=float(loss[g, 0])))
    return rows


def _best(acc: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Per layer (row), the column with the highest accuracy; ties go to the lower loss."""
    return np.array([np.lexsort((loss[g], -acc[g]))[0] for g in range(acc.shape[0])])
