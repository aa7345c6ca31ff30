"""Streaming SGD probes: every layer × every learning rate trained in one pass over the data.

For feature sets too large for full-batch L-BFGS (the paper's ImageNet probes). One model
holds all heads, weights ``(G layers, nLR rates, K, d+1)``; each minibatch is read once from
the memmapped activation cache (the same rows of every layer) and updates every head. The
recipe is the paper's: momentum 0.9, no weight decay, learning rates 30, 10, 3, 1, 0.3, …,
cosine schedule. Features are whitened with training-split statistics (mean and covariance,
computed in one streaming float64 pass): an invertible linear map, so the heads can express
exactly the same classifiers, but plain SGD then converges in a few epochs on every layer —
per-feature standardisation alone left the ill-conditioned early layers (layer 0 pools token
embeddings) 1–9 points short of the L-BFGS optimum after 10–40 epochs on the shipped model.
One learning-rate grid then suits every layer. ``preprocess="standardize"`` (per-feature
scale only; d instead of d² numbers per layer at very large widths) and ``"none"`` remain.

Protocol as for L-BFGS: train on ``train``, choose each layer's rate on ``val``, retrain on
``train + val`` at that rate, report ``test`` once with a bootstrap interval (and, when asked,
the per-example test predictions). A head whose loss goes non-finite is frozen and recorded
as diverged; it is never chosen.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from igpt_eval.errors import IGPTError
from igpt_eval.model.devices import resolve_device
from igpt_eval.model.head import floored
from igpt_eval.names import Metric, Probe
from igpt_eval.predictions import Predictions, Scored, prediction_key
from igpt_eval.results import row
from igpt_eval.settings import Settings
from igpt_eval.stats import bootstrap_accuracy_ci

SGD_LRS = (30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01)


class ArraySource:
    """In-memory stand-in for an activation cache: ``source[layer]`` → (N, d), ``.labels``."""

    def __init__(self, X: np.ndarray, y: np.ndarray, layers: list[int]):
        self._X, self.labels, self.layers = X, np.asarray(y), list(layers)

    def __getitem__(self, layer: int) -> np.ndarray:
        return self._X[self.layers.index(layer)]


class _Stream:
    """Minibatches of (G, B, d) standardised features and labels from one or more sources."""

    def __init__(self, sources, layers, mean, transform, device):
        self.sources, self.layers = sources, layers
        self.sizes = [len(s.labels) for s in sources]
        self.n = sum(self.sizes)
        self.mean, self.transform, self.device = mean, transform, device  # (G,1,d), (G,d,d)
        self.labels = np.concatenate([np.asarray(s.labels) for s in sources])

    def rows(self, idx: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        idx = np.sort(idx)  # sorted reads are kind to memmaps
        parts, start = [], 0
        for s, n in zip(self.sources, self.sizes, strict=True):
            local = idx[(idx >= start) & (idx < start + n)] - start
            if len(local):
                parts.append(np.stack([np.asarray(s[x][local], np.float32) for x in self.layers]))
            start += n
        X = torch.from_numpy(np.concatenate(parts, 1)).to(self.device)  # (G, B, d)
        return torch.bmm(X - self.mean, self.transform), self.labels[idx]

    def batches(self, batch_size: int, steps: int, seed: int, block: int = 32_768):
        """``steps`` shuffled minibatches, epoch after epoch. Rows are read from the
        memmaps a block of ``block`` contiguous rows at a time (one sequential read per
        layer), the blocks visited in a random order and the rows shuffled within each;
        data no larger than one block is simply shuffled whole every epoch."""
        rng = np.random.default_rng(seed)
        done = 0
        while True:
            starts = rng.permutation(np.arange(0, self.n, block))
            for s in starts:
                X, y = self.rows(np.arange(s, min(s + block, self.n)))  # (G, b, d)
                order = torch.from_numpy(rng.permutation(len(y))).to(X.device)
                X, y = X[:, order], y[order.cpu().numpy()]
                for i in range(0, len(y) - batch_size + 1, batch_size):
                    yield X[:, i : i + batch_size], y[i : i + batch_size]
                    done += 1
                    if done == steps:
                        return


PREPROCESS = ("whiten", "standardize", "none")
#: Covariance eigenvalues are floored at this fraction of the largest before whitening, so
#: (near-)null directions — layer 0 pools token embeddings and spans few of them — are not
#: blown up into noise.
WHITEN_FLOOR = 1e-4


def feature_stats(
    source, layers, preprocess: str = "whiten", chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer mean (G, 1, d) and the linear map (G, d, d) applied after centring, from
    one streaming float64 pass over ``source``: the whitening ``U diag(1/sqrt(λ)) Uᵀ``
    (ZCA, eigenvalues floored at ``WHITEN_FLOOR·λ_max``), ``diag(1/std)``, or the identity."""
    if preprocess not in PREPROCESS:
        raise IGPTError(f"unknown preprocessing {preprocess!r}; choose one of {PREPROCESS}")
    n = len(source.labels)
    means, maps = [], []
    for x in layers:
        arr = source[x]
        d = arr.shape[1]
        s1, s2 = np.zeros(d), np.zeros((d, d))
        for i in range(0, n, chunk):
            a = np.asarray(arr[i : i + chunk], np.float64)
            s1 += a.sum(0)
            s2 += a.T @ a
        m = s1 / n
        cov = s2 / n - np.outer(m, m)
        if preprocess == "whiten":
            lam, U = np.linalg.eigh(cov)
            lam = np.maximum(lam, WHITEN_FLOOR * max(lam.max(), 1e-12))
            maps.append((U / np.sqrt(lam)) @ U.T)
        elif preprocess == "standardize":
            maps.append(np.diag(1 / floored(np.sqrt(np.maximum(np.diag(cov), 0)))))
        else:
            m = np.zeros(d)
            maps.append(np.eye(d))
        means.append(m)
    return np.stack(means)[:, None].astype(np.float32), np.stack(maps).astype(np.float32)


def train_heads(
    stream: _Stream,
    lrs: torch.Tensor,
    K: int,
    *,
    epochs: float,
    batch_size: int,
    seed: int,
    momentum: float = 0.9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD with momentum on every (layer, rate) head at once; returns weights
    (G, nLR, K, d+1) and a diverged mask (G, nLR). ``lrs`` is (G, nLR)."""
    G, nLR = lrs.shape
    d = stream.mean.shape[-1]
    dev = stream.device
    W = torch.zeros(G, nLR, K, d + 1, device=dev)
    buf = torch.zeros_like(W)
    diverged = torch.zeros(G, nLR, dtype=torch.bool, device=dev)
    batch_size = min(batch_size, stream.n)
    per_epoch = max(1, stream.n // batch_size)
    steps = max(1, math.ceil(epochs * per_epoch))
    onehot = torch.eye(K, device=dev)  # columns picked per batch: (K, B) targets
    batches = stream.batches(batch_size, steps, seed)
    for step in range(steps):
        X, y = next(batches)  # (G, B, d), (B,)
        B = len(y)
        Wm = W[..., :d].reshape(G, nLR * K, d)
        # Logits laid out (G, nLR, K, B): the softmax over K is then element-wise work
        # over long rows of B, not a reduction over a tiny inner axis.
        Z = torch.bmm(Wm, X.transpose(1, 2)).view(G, nLR, K, B) + W[..., d, None]
        R = torch.softmax(Z, 2).sub_(onehot[:, torch.as_tensor(y, device=dev)]).div_(B)
        gW = torch.bmm(R.view(G, nLR * K, B), X).view(G, nLR, K, d)
        grad = torch.cat([gW, R.sum(-1, keepdim=True)], -1)  # (G, nLR, K, d+1)
        bad = ~torch.isfinite(grad).all(-1).all(-1)
        diverged |= bad
        grad = torch.where(diverged[..., None, None], torch.zeros_like(grad), grad)
        buf.mul_(momentum).add_(grad)
        lr = lrs * 0.5 * (1 + math.cos(math.pi * step / steps))  # cosine to 0
        W -= lr[..., None, None] * buf
        blown = ~torch.isfinite(W).all(-1).all(-1)
        diverged |= blown
        W = torch.where(diverged[..., None, None], torch.zeros_like(W), W)
    return W, diverged


def _predict(stream: _Stream, W: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Predicted class indices (G, nLR, N) of every head on a whole stream."""
    G, nLR, K, d1 = W.shape
    d = d1 - 1
    Wm = W[..., :d].permute(0, 3, 1, 2).reshape(G, d, nLR * K)
    out = []
    for s in range(0, stream.n, chunk):
        X, _ = stream.rows(np.arange(s, min(s + chunk, stream.n)))
        Z = torch.bmm(X, Wm).view(G, -1, nLR, K) + W[..., d].unsqueeze(1)
        out.append(Z.argmax(-1))
    return torch.cat(out, 1).permute(0, 2, 1)


def _accuracy(stream: _Stream, W: torch.Tensor) -> torch.Tensor:
    """Correctness (G, nLR, N) of every head on a whole stream."""
    return _predict(stream, W) == torch.as_tensor(stream.labels, device=W.device)


@dataclass(frozen=True)
class SGDProtocol(Settings):
    """How :func:`probe_sgd` trains, chooses and scores each layer's head (the streaming
    counterpart of :class:`~igpt_eval.probes.protocol.Protocol`)."""

    lrs: tuple[float, ...] = SGD_LRS  # the rate grid: every rate's head trains in one pass
    epochs: float = 10  # passes over the training split
    batch_size: int = 256
    # Training-split statistics applied before the heads: whiten, standardize or none.
    # Whitened, one rate grid suits every layer and a few epochs converge.
    preprocess: str = "whiten"
    device: str = "cpu"
    seed: int = 0  # batch order and the bootstrap's
    n_boot: int = 10_000  # bootstrap resamples of the test accuracy's 95% interval
    KIND: ClassVar[str] = "SGD protocol"


def probe_sgd(
    splits: dict,
    layers: list[int],
    *,
    meta: dict,
    sites: list[str],
    protocol: SGDProtocol | None = None,
) -> Scored:
    """The SGD probe protocol on ``splits`` = {train, val, test} caches (or ArraySources):
    for each layer, heads at every rate of ``protocol.lrs`` on the features mapped with
    training-split statistics, the rate chosen on validation, retrained on train + val and
    scored on test once. Returns the rows and every layer's predicted test labels, named
    ``{model}/sgd/{site}`` (a :class:`Scored`)."""
    p = protocol or SGDProtocol()
    lrs, epochs, batch_size, preprocess = p.lrs, p.epochs, p.batch_size, p.preprocess
    device, seed, n_boot = p.device, p.seed, p.n_boot
    dev = resolve_device(device)
    train, val, test = (splits[k] for k in ("train", "val", "test"))
    classes = np.unique(np.asarray(train.labels))
    if len(classes) < 2:
        raise IGPTError("the training labels hold a single class; a probe needs at least two")
    K = len(classes)
    G = len(layers)
    mean, transform = feature_stats(train, layers, preprocess)
    mean_t, map_t = torch.from_numpy(mean).to(dev), torch.from_numpy(transform).to(dev)

    def stream(*sources):
        st = _Stream(sources, layers, mean_t, map_t, dev)
        idx = np.clip(np.searchsorted(classes, st.labels), 0, K - 1)
        if not np.array_equal(classes[idx], st.labels):
            raise IGPTError("a split has labels the training split never shows")
        st.labels = idx
        return st

    base = row(
        meta,
        probe=Probe.SGD,
        backend="torch",
        standardize=preprocess != "none",
        preprocess=preprocess,
        seed=seed,
        C=np.nan,
        n_iter=None,
        grad_norm=np.nan,
    )
    lr_grid = torch.tensor(lrs, dtype=torch.float32, device=dev).expand(G, -1).contiguous()
    t0 = time.perf_counter()
    tr = stream(train)
    W, diverged = train_heads(tr, lr_grid, K, epochs=epochs, batch_size=batch_size, seed=seed)
    seconds = time.perf_counter() - t0
    va = stream(val)
    val_acc = _accuracy(va, W).float().mean(-1)  # (G, nLR)
    val_acc = torch.where(diverged, torch.full_like(val_acc, float("nan")), val_acc)
    steps = int(math.ceil(epochs * max(1, tr.n // batch_size)))
    best = torch.nan_to_num(val_acc, nan=-1.0).argmax(1)  # first (largest) rate wins ties
    rows = []
    for g in range(G):
        for j, lr in enumerate(lrs):
            rows.append(
                row(
                    base,
                    split="val",
                    layer=layers[g],
                    site=sites[g],
                    lr=float(lr),
                    metric=Metric.ACCURACY,
                    value=float(val_acc[g, j]),
                    converged=not bool(diverged[g, j]),
                    n_iter=steps,
                    seconds=seconds,
                    selected=bool(j == int(best[g])),
                    n_train=tr.n,
                    n_eval=va.n,
                )
            )
    # Retrain each layer at its chosen rate on train + val; score test once.
    t0 = time.perf_counter()
    fit = stream(train, val)
    chosen = lr_grid[torch.arange(G), best][:, None]  # (G, 1)
    W2, div2 = train_heads(fit, chosen, K, epochs=epochs, batch_size=batch_size, seed=seed + 1)
    seconds = time.perf_counter() - t0
    te = stream(test)
    pred = _predict(te, W2)[:, 0].cpu().numpy()  # (G, N) class indices
    correct = pred == te.labels
    for g in range(G):
        lo, hi = bootstrap_accuracy_ci(correct[g], n_boot=n_boot, seed=seed)
        rows.append(
            row(
                base,
                split="test",
                layer=layers[g],
                site=sites[g],
                lr=float(chosen[g, 0]),
                metric=Metric.ACCURACY,
                value=float(correct[g].mean()),
                ci_low=lo,
                ci_high=hi,
                converged=not bool(div2[g, 0]),
                selected=True,
                n_iter=int(math.ceil(epochs * max(1, fit.n // batch_size))),
                seconds=seconds,
                n_train=fit.n,
                n_eval=te.n,
            )
        )
    predictions = Predictions()
    for g in range(G):
        key = prediction_key(meta.get("model", ""), "sgd", sites[g])
        predictions.add(key, classes[pred[g]], classes[te.labels])
    return Scored(rows, predictions)
