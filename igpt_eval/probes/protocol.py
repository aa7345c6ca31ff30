"""The linear-probe protocol (DESIGN §5): choose on validation, refit, report test once.

For every layer at once:

1. *path*: fit on ``train`` along a log grid of C (1e-3 … 1e3), from strong to weak
   regularisation, each fit warm-started from the previous C's solution, and score each on
   ``val``. A layer leaves the path once its validation accuracy has not improved for
   ``patience`` consecutive C values (weaker regularisation past that point only overfits,
   and those are the slowest problems to solve);
2. *refine*: around each layer's best C on the path, four more values a third of a decade
   apart, warm-started from that solution;
3. *select*: the C with the best validation accuracy (ties: lower validation loss);
4. *refit* on ``train + val`` at the chosen C, warm-started, and score ``test`` once, with a
   bootstrap 95% interval; with ``return_predictions``, each layer's per-example test
   predictions come back too (a :class:`~igpt_eval.results.Predictions`), for paired
   comparisons (:mod:`igpt_eval.analysis.paired`).

The test split is never used to choose anything. Every fit is a row of the results table,
so the whole regularisation sweep is on record (rows with ``split="val"``), not only its
winner (``selected=True``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from igpt_eval.analysis.stats import bootstrap_accuracy_ci
from igpt_eval.errors import IGPTError
from igpt_eval.probes.backends import BACKENDS, resolve_device
from igpt_eval.probes.logistic import LogisticProbe, fit_grid
from igpt_eval.results import Predictions, prediction_key

#: The splits of the protocol: fit on train, choose on val, report test.
SPLITS = ("train", "val", "test")
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
    """Accuracy (G, nC), mean cross-entropy (G, nC) and predicted class indices (G, nC, N)."""
    dev = resolve_device(device)
    Xt = torch.as_tensor(X, device=dev, dtype=torch.float32)
    G, nC, K, d = sol.coef.shape
    W = sol.coef.to(dev, torch.float32).permute(0, 3, 1, 2).reshape(G, d, nC * K)
    Z = torch.bmm(Xt, W).view(G, -1, nC, K) + sol.intercept.to(dev, torch.float32)[:, None]
    yt = torch.as_tensor(y, device=dev, dtype=torch.long)
    ce = torch.logsumexp(Z, -1) - Z.gather(-1, yt[None, :, None, None].expand(G, -1, nC, 1))[..., 0]
    pred = Z.argmax(-1).permute(0, 2, 1)  # (G, nC, N)
    acc = (pred == yt).float().mean(-1)
    return acc.cpu().numpy(), ce.mean(1).cpu().numpy(), pred.cpu().numpy()


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
    standardize: bool = True,
    n_boot: int = 10_000,
    patience: int = 2,
    seed: int = 0,
    progress: bool = False,
    probe: str = "lbfgs",
    return_predictions: bool = False,
) -> list[dict] | tuple[list[dict], Predictions]:
    """Run the protocol on every layer; returns tidy result rows (see :mod:`igpt_eval.results`).

    ``meta`` fills the model/objective/dataset columns; ``sites`` names each layer's site;
    ``probe`` is the rows' probe name (``pixels`` for the raw-pixel baseline).
    ``Cs`` is the path's grid (walked in increasing order); a layer leaves it after
    ``patience`` values without a better validation accuracy. ``progress`` prints a line per
    stage to stderr. With ``return_predictions``, returns ``(rows, predictions)``: every
    layer's predicted test labels, named ``{model}/{probe}/{site}``.
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
    base = dict(
        meta,
        probe=probe,
        backend=backend,
        standardize=standardize,
        preprocess="standardize" if standardize else "none",
        seed=seed,
        lr=np.nan,
        n_features=train.X.shape[2],
    )
    rows: list[dict] = []

    def record(sets, stage_C, sol, acc, loss, seconds, n):
        for i, g in enumerate(sets):
            for c in range(stage_C.shape[1]):
                common = dict(
                    base,
                    split="val",
                    layer=layers[g],
                    site=sites[g],
                    C=float(stage_C[i, c]),
                    n_iter=int(sol.n_iter[i, c]),
                    converged=bool(sol.converged[i, c]),
                    grad_norm=float(sol.grad_norm[i, c]),
                    seconds=seconds,
                    n_train=n,
                    n_eval=len(y_va),
                    selected=False,
                )
                rows.append(dict(common, metric="accuracy", value=float(acc[i, c])))
                rows.append(dict(common, metric="loss", value=float(loss[i, c])))

    def say(what: str, seconds: float) -> None:
        if progress:
            print(f"[probe] {what}: {seconds:.1f} s", file=sys.stderr, flush=True)

    def stage(sets: np.ndarray, C: np.ndarray, init) -> _Solution:
        """Fit layers ``sets`` at C (len(sets), nC) on train, score val, record the rows."""
        t0 = time.perf_counter()
        # Every layer still on the path (the common case): the arrays themselves, no copy.
        everyone = len(sets) == G
        sol = _solve(Xtr if everyone else Xtr[sets], y_tr, C, K, backend, init=init, **opts)
        acc, loss, _ = _evaluate(Xva if everyone else Xva[sets], y_va, sol, device)
        seconds = time.perf_counter() - t0
        for i, g in enumerate(sets):
            for c in range(C.shape[1]):
                cands[g].append(
                    (acc[i, c], loss[i, c], C[i, c], sol.coef[i, c], sol.intercept[i, c])
                )
        record(sets, C, sol, acc, loss, seconds, len(y_tr))
        shown = sorted({float(f"{c:.3g}") for c in C.ravel()})
        say(f"{len(sets)} layer(s) x C = {', '.join(f'{c:g}' for c in shown)}", seconds)
        return sol

    # 1. The C path, warm-started from one C to the next; each layer stops on its own.
    cands: list[list[tuple]] = [[] for _ in range(G)]
    live = np.arange(G)
    since_best = np.zeros(G, int)
    init = None
    for C in np.sort(Cs):
        sol = stage(live, np.full((len(live), 1), C), init)
        for g in live:
            accs = [c[0] for c in cands[g]]
            since_best[g] = 0 if accs[-1] > max(accs[:-1], default=-1.0) else since_best[g] + 1
        going = since_best[live] < patience
        live = live[going]
        if live.size == 0:
            break
        init = sol.init(np.zeros(len(going), int))[torch.from_numpy(going)]

    # 2. Refine around each layer's best C, warm-started from it.
    best = [_best(c) for c in cands]
    if refine:
        C2 = np.array([cands[g][best[g]][2] for g in range(G)])[:, None] * REFINE_STEPS[None]
        init = torch.stack([_warm(cands[g][best[g]]) for g in range(G)])[:, None]
        stage(np.arange(G), C2, init.expand(-1, C2.shape[1], -1, -1).contiguous())
        best = [_best(c) for c in cands]

    # 3. Select on validation.
    C_best = np.array([cands[g][best[g]][2] for g in range(G)])
    for r in rows:  # mark the chosen validation rows
        g = layers.index(r["layer"])
        r["selected"] = r["C"] == C_best[g]

    # Refit on train + val at the chosen C, warm-started from the chosen train solution.
    init = torch.stack([_warm(cands[g][best[g]]) for g in range(G)])[:, None]
    t0 = time.perf_counter()
    X_fit = np.concatenate([Xtr, Xva], 1)
    y_fit = np.concatenate([y_tr, y_va])
    final = _solve(X_fit, y_fit, C_best[:, None], K, backend, init=init, **opts)
    seconds = time.perf_counter() - t0
    say(f"refit {G} layer(s) on train+val ({len(y_fit):,} rows)", seconds)
    acc, loss, pred = _evaluate(Xte, y_te, final, device)
    for g in range(G):
        lo, hi = bootstrap_accuracy_ci(pred[g, 0] == y_te, n_boot=n_boot, seed=seed)
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
    if not return_predictions:
        return rows
    predictions = Predictions()
    for g in range(G):
        key = prediction_key(meta.get("model", ""), probe, sites[g])
        predictions.add(key, classes[pred[g, 0]], test.y)
    return rows, predictions


def _best(cands: list[tuple]) -> int:
    """Index of the candidate (acc, loss, C, coef, intercept) with the highest validation
    accuracy; ties go to the lower validation loss."""
    return min(range(len(cands)), key=lambda i: (-cands[i][0], cands[i][1]))


def _warm(cand: tuple) -> torch.Tensor:
    """A candidate's solution as a warm start (K, d+1): weights, then intercept."""
    return torch.cat([cand[3], cand[4][:, None]], -1)
