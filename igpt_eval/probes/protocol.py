"""The linear-probe protocol (docs/design.md): choose on validation, refit, report test once.

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
   bootstrap 95% interval; each layer's per-example test predictions come back with the
   rows (a :class:`~igpt_eval.predictions.Scored`), for paired comparisons
   (:mod:`igpt_eval.probes.paired`).

The test split is never used to choose anything. Every fit is a row of the results table,
so the whole regularisation sweep is on record (rows with ``split="val"``), not only its
winner (``selected=True``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from igpt_eval.errors import IGPTError
from igpt_eval.model.devices import resolve_device
from igpt_eval.model.head import feature_scale
from igpt_eval.names import SPLITS, Metric
from igpt_eval.predictions import Predictions, Scored, prediction_key
from igpt_eval.probes.backends import BACKENDS
from igpt_eval.probes.lbfgs import LBFGSOptions
from igpt_eval.probes.logistic import LogisticProbe, fit_grid, path_start
from igpt_eval.results import row
from igpt_eval.settings import Settings
from igpt_eval.stats import bootstrap_accuracy_ci

log = logging.getLogger(__name__)

#: The splits of the protocol: fit on train, choose on val, report test.
COARSE_CS = 10.0 ** np.arange(-3, 4)  # 1e-3 … 1e3
REFINE_STEPS = 10.0 ** np.array([-2 / 3, -1 / 3, 1 / 3, 2 / 3])


@dataclass(frozen=True)
class Protocol(Settings):
    """How :func:`probe_lbfgs` fits, chooses and scores each layer; the defaults are the
    paper's protocol as this package runs it (docs/design.md, "Probes")."""

    Cs: tuple[float, ...] = tuple(COARSE_CS)  # the C path, walked in increasing order
    patience: int = 2  # values without a better val accuracy before a layer leaves the path
    refine: bool = True  # four more Cs a third of a decade apart around each layer's best
    backend: str = "torch"  # the solver: torch (batched, GPU-able), sklearn or cuml
    device: str = "cpu"  # where the torch solver runs
    dtype: str = "float32"  # the solve's precision
    tol: float = 1e-4  # gradient tolerance of each fit
    max_iter: int = 10_000  # a cap, not a budget: torch's solver needs a few hundred at most
    standardize: bool = True  # train-split mean and std applied to every split
    n_boot: int = 10_000  # bootstrap resamples of the test accuracy's 95% interval
    seed: int = 0  # the bootstrap's
    KIND: ClassVar[str] = "protocol"

    def __post_init__(self):
        object.__setattr__(self, "Cs", tuple(float(c) for c in np.ravel(self.Cs)))


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
        options = LBFGSOptions(tol=tol, max_iter=max_iter)
        r = fit_grid(X, y, C, K, device=device, dtype=dtype, init=init, options=options)
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
    protocol: Protocol | None = None,
    probe: str = "lbfgs",
) -> Scored:
    """Run the protocol on every layer; returns tidy result rows (see :mod:`igpt_eval.results`)
    and every layer's predicted test labels, named ``{model}/{probe}/{site}`` (a
    :class:`Scored`).

    ``meta`` fills the model/objective/dataset columns; ``sites`` names each layer's site;
    ``probe`` is the rows' probe name (``pixels`` for the raw-pixel baseline). ``protocol``
    (a :class:`Protocol`; default: its defaults) holds the C path, the solver and the test's
    bootstrap. Its ``max_iter`` is a cap, not a budget: the torch solver converges in a few
    hundred iterations at most; scikit-learn's lbfgs needs thousands on collinear features
    (see :mod:`igpt_eval.probes.backends`). A layer leaves the path after ``patience``
    values without a better validation accuracy. Each stage logs its time (INFO).
    """
    p = protocol or Protocol()
    backend, device, seed, standardize = p.backend, p.device, p.seed, p.standardize
    if backend not in BACKENDS:
        raise IGPTError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    Cs = np.asarray(p.Cs, dtype=np.float64)
    if Cs.ndim != 1 or not (Cs > 0).all():
        raise IGPTError("every C must be > 0")
    classes, y = _encode_labels(train, val, test)
    X = (train.X, val.X, test.X)
    if standardize:  # statistics from train only, applied to every split
        X = _standardized(*X)
    if backend == "torch":  # onto the device once: every stage below reads them there
        dev = resolve_device(device)
        X = tuple(torch.as_tensor(x, dtype=torch.float32, device=dev) for x in X)
    base = row(
        meta,
        probe=probe,
        backend=backend,
        standardize=standardize,
        preprocess="standardize" if standardize else "none",
        seed=seed,
        lr=np.nan,
        n_features=train.X.shape[2],
    )
    run = _Protocol(
        dict(zip(SPLITS, X, strict=True)),
        dict(zip(SPLITS, y, strict=True)),
        len(classes),
        layers,
        sites,
        base,
        backend=backend,
        device=device,
        solver=dict(device=device, dtype=p.dtype, tol=p.tol, max_iter=p.max_iter),
    )
    run.walk(np.sort(Cs), p.patience)  # 1. the C path
    if p.refine:
        run.refine()  # 2. around each layer's best C
    C_best, init = run.select()  # 3. on validation
    pred = run.test(C_best, init, n_boot=p.n_boot, seed=seed)  # 4. refit, test once
    predictions = Predictions()
    for g in range(len(layers)):
        key = prediction_key(meta.get("model", ""), probe, sites[g])
        predictions.add(key, classes[pred[g, 0]], test.y)
    return Scored(run.rows, predictions)


def _encode_labels(train: Features, val: Features, test: Features) -> tuple[np.ndarray, tuple]:
    """The training split's classes, and each split's labels as indices into them; an
    :class:`IGPTError` for fewer than two classes or a label training never shows."""
    classes = np.unique(train.y)
    if len(classes) < 2:
        raise IGPTError("the training labels hold a single class; a probe needs at least two")
    K = len(classes)
    y = tuple(np.searchsorted(classes, s.y) for s in (train, val, test))
    for name, s, yy in (("val", val, y[1]), ("test", test, y[2])):
        if not np.array_equal(classes[np.clip(yy, 0, K - 1)], s.y):
            raise IGPTError(f"the {name} split has labels the training split never shows")
    return classes, y


def _standardized(Xtr, Xva, Xte) -> tuple[np.ndarray, ...]:
    """Every split standardised with the training split's mean and standard deviation (σ
    floored relative to the layer's largest: :func:`igpt_eval.model.head.feature_scale`,
    the fine-tuning head's standardisation too)."""
    mu, sd = (a.astype(Xtr.dtype) for a in feature_scale(Xtr))
    return tuple((x - mu) / sd for x in (Xtr, Xva, Xte))


class _Protocol:
    """One run of the protocol on G layers: the (standardised) splits ``X`` and label
    indices ``y`` by split name, the result rows so far, and every layer's candidates
    ``(acc, loss, C, coef, intercept)``, one per fit on train scored on val."""

    def __init__(self, X, y, K, layers, sites, base, *, backend, device, solver):
        self.X, self.y, self.K = X, y, K
        self.layers, self.sites, self.base = layers, sites, base
        self.backend, self.device, self.solver = backend, device, solver
        self.cands: list[list[tuple]] = [[] for _ in layers]
        self.rows: list[dict] = []

    def say(self, what: str, seconds: float) -> None:
        """One line on a stage and its time (INFO)."""
        log.info("[probe] %s: %.1f s", what, seconds)

    def stage(self, sets: np.ndarray, C: np.ndarray, init) -> _Solution:
        """Fit layers ``sets`` at C (len(sets), nC) on train, score val, keep the candidates
        and record the rows."""
        t0 = time.perf_counter()
        # Every layer still on the path (the common case): the arrays themselves, no copy.
        everyone = len(sets) == len(self.layers)
        Xtr, Xva = (self.X[s] if everyone else self.X[s][sets] for s in ("train", "val"))
        sol = _solve(Xtr, self.y["train"], C, self.K, self.backend, init=init, **self.solver)
        acc, loss, _ = _evaluate(Xva, self.y["val"], sol, self.device)
        seconds = time.perf_counter() - t0
        for i, g in enumerate(sets):
            for c in range(C.shape[1]):
                self.cands[g].append(
                    (acc[i, c], loss[i, c], C[i, c], sol.coef[i, c], sol.intercept[i, c])
                )
        self._val_rows(sets, C, sol, acc, loss, seconds)
        shown = sorted({float(f"{c:.3g}") for c in C.ravel()})
        self.say(f"{len(sets)} layer(s) x C = {', '.join(f'{c:g}' for c in shown)}", seconds)
        return sol

    def _val_rows(self, sets, C, sol: _Solution, acc, loss, seconds: float) -> None:
        """The validation rows (accuracy, then loss) of one stage, layer by layer."""
        for i, g in enumerate(sets):
            for c in range(C.shape[1]):
                common = row(
                    self.base,
                    split="val",
                    layer=self.layers[g],
                    site=self.sites[g],
                    C=float(C[i, c]),
                    n_iter=int(sol.n_iter[i, c]),
                    converged=bool(sol.converged[i, c]),
                    grad_norm=float(sol.grad_norm[i, c]),
                    seconds=seconds,
                    n_train=len(self.y["train"]),
                    n_eval=len(self.y["val"]),
                    selected=False,
                )
                self.rows.append(row(common, metric=Metric.ACCURACY, value=float(acc[i, c])))
                self.rows.append(row(common, metric=Metric.LOSS, value=float(loss[i, c])))

    def walk(self, Cs: np.ndarray, patience: int) -> None:
        """The C path, each fit warm-started from the layer's path so far (:meth:`_start`);
        each layer leaves it on its own, after ``patience`` values of C without a better
        validation accuracy."""
        G = len(self.layers)
        live = np.arange(G)
        since_best = np.zeros(G, int)
        init = None
        for k, C in enumerate(Cs):
            self.stage(live, np.full((len(live), 1), C), init)
            for g in live:
                accs = [c[0] for c in self.cands[g]]
                since_best[g] = 0 if accs[-1] > max(accs[:-1], default=-1.0) else since_best[g] + 1
            live = live[since_best[live] < patience]
            if live.size == 0 or k + 1 == len(Cs):
                break
            init = torch.stack([self._start(self.cands[g], [Cs[k + 1]])[0] for g in live])[:, None]

    @staticmethod
    def _start(path: list[tuple], Cs) -> list[torch.Tensor]:
        """Warm starts (K, d+1) at each C of ``Cs`` from a layer's fits so far (candidates):
        :func:`~igpt_eval.probes.logistic.path_start`, the solution path followed."""
        known, sols = [c[2] for c in path], [_warm(c) for c in path]
        return [path_start(known, sols, C) for C in Cs]

    def best(self) -> list[tuple]:
        """Each layer's best candidate so far (see :func:`_best`)."""
        return [c[_best(c)] for c in self.cands]

    def refine(self) -> None:
        """Four more values of C around each layer's best, each warm-started between the
        best and its neighbour on the path (:meth:`_start`)."""
        best = self.best()
        C2 = np.array([b[2] for b in best])[:, None] * REFINE_STEPS[None]
        starts = [torch.stack(self._start(c, C)) for c, C in zip(self.cands, C2, strict=True)]
        init = torch.stack(starts)  # (G, 4, K, d+1)
        self.stage(np.arange(len(best)), C2, init)

    def select(self) -> tuple[np.ndarray, torch.Tensor]:
        """Each layer's C chosen on validation (its rows marked ``selected``), and warm
        starts (G, 1, K, d+1) from the chosen solutions."""
        best = self.best()
        C_best = np.array([b[2] for b in best])
        for r in self.rows:
            r["selected"] = r["C"] == C_best[self.layers.index(r["layer"])]
        return C_best, torch.stack([_warm(b) for b in best])[:, None]

    def test(self, C_best: np.ndarray, init, *, n_boot: int, seed: int) -> np.ndarray:
        """Refit on train + val at the chosen C, warm-started, score test once (accuracy
        with a bootstrap 95% interval, and loss); returns the predictions (G, 1, N)."""
        G = len(self.layers)
        t0 = time.perf_counter()
        both = (self.X["train"], self.X["val"])
        X_fit = torch.cat(both, 1) if torch.is_tensor(both[0]) else np.concatenate(both, 1)
        y_fit = np.concatenate([self.y["train"], self.y["val"]])
        final = _solve(
            X_fit, y_fit, C_best[:, None], self.K, self.backend, init=init, **self.solver
        )
        seconds = time.perf_counter() - t0
        self.say(f"refit {G} layer(s) on train+val ({len(y_fit):,} rows)", seconds)
        y_te = self.y["test"]
        acc, loss, pred = _evaluate(self.X["test"], y_te, final, self.device)
        for g in range(G):
            lo, hi = bootstrap_accuracy_ci(pred[g, 0] == y_te, n_boot=n_boot, seed=seed)
            common = row(
                self.base,
                split="test",
                layer=self.layers[g],
                site=self.sites[g],
                C=float(C_best[g]),
                n_iter=int(final.n_iter[g, 0]),
                converged=bool(final.converged[g, 0]),
                grad_norm=float(final.grad_norm[g, 0]),
                seconds=seconds,
                n_train=len(y_fit),
                n_eval=len(y_te),
                selected=True,
            )
            value = float(acc[g, 0])
            self.rows.append(
                row(common, metric=Metric.ACCURACY, value=value, ci_low=lo, ci_high=hi)
            )
            self.rows.append(row(common, metric=Metric.LOSS, value=float(loss[g, 0])))
        return pred


def _best(cands: list[tuple]) -> int:
    """Index of the candidate (acc, loss, C, coef, intercept) with the highest validation
    accuracy; ties go to the lower validation loss."""
    return min(range(len(cands)), key=lambda i: (-cands[i][0], cands[i][1]))


def _warm(cand: tuple) -> torch.Tensor:
    """A candidate's solution as a warm start (K, d+1): weights, then intercept."""
    return torch.cat([cand[3], cand[4][:, None]], -1)
