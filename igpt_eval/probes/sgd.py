"""Streaming SGD probes: every layer × every learning rate trained in one pass over the data.

For feature sets too large for full-batch L-BFGS (the paper's ImageNet probes). One model
holds all heads, weights ``(G layers, nLR rates, K, d+1)``; each minibatch is read once from
the memmapped activation cache (the same rows of every layer) and updates every head. The
recipe is the paper's: momentum 0.9, no weight decay, learning rates 30, 10, 3, 1, 0.3, …,
cosine schedule. Features are standardised with training-split statistics (computed in one
streaming pass), so one learning-rate grid suits every layer.

Protocol as for L-BFGS: train on ``train``, choose each layer's rate on ``val``, retrain on
``train + val`` at that rate, report ``test`` once with a bootstrap interval. A head whose
loss goes non-finite is frozen and recorded as diverged; it is never chosen.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from igpt_eval.analysis import bootstrap_accuracy_ci
from igpt_eval.errors import IGPTError
from igpt_eval.probes.backends import resolve_device

SGD_LRS = (30.0, 10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01)


class ArraySource:
    """In-memory stand-in for an activation cache: ``source[layer]`` → (N, d), ``.labels``."""

    def __init__(self, X: np.ndarray, y: np.ndarray, layers: list[int]):
        self._X, self.labels, self.layers = X, np.asarray(y), list(layers)

    def __getitem__(self, layer: int) -> np.ndarray:
        return self._X[self.layers.index(layer)]


class _Stream:
    """Minibatches of (G, B, d) standardised features and labels from one or more sources."""

    def __init__(self, sources, layers, mean, std, device):
        self.sources, self.layers = sources, layers
        self.sizes = [len(s.labels) for s in sources]
        self.n = sum(self.sizes)
        self.mean, self.std, self.device = mean, std, device
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
        return (X - self.mean) / self.std, self.labels[idx]


def feature_stats(source, layers, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer mean and std (G, 1, d) of a source, in one streaming float64 pass."""
    n = len(source.labels)
    out_m, out_s = [], []
    for x in layers:
        arr = source[x]
        s1 = np.zeros(arr.shape[1])
        s2 = np.zeros(arr.shape[1])
        for i in range(0, n, chunk):
            a = np.asarray(arr[i : i + chunk], np.float64)
            s1 += a.sum(0)
            s2 += (a * a).sum(0)
        m = s1 / n
        out_m.append(m)
        out_s.append(np.sqrt(np.maximum(s2 / n - m * m, 0)) + 1e-6)
    return np.stack(out_m)[:, None].astype(np.float32), np.stack(out_s)[:, None].astype(np.float32)


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
    per_epoch = max(1, stream.n // batch_size)
    steps = max(1, math.ceil(epochs * per_epoch))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(stream.n)
    for step in range(steps):
        i = step % per_epoch
        if i == 0 and step:
            perm = rng.permutation(stream.n)
        X, y = stream.rows(perm[i * batch_size : (i + 1) * batch_size])
        yt = torch.as_tensor(y, device=dev)
        Wm = W[..., :d].permute(0, 3, 1, 2).reshape(G, d, nLR * K)
        Z = torch.bmm(X, Wm).view(G, -1, nLR, K) + W[..., d].unsqueeze(1)  # (G, B, nLR, K)
        R = torch.softmax(Z, -1)
        R[:, torch.arange(len(y)), :, yt] -= 1.0
        R /= len(y)
        gW = torch.bmm(X.transpose(1, 2), R.reshape(G, len(y), -1))  # (G, d, nLR·K)
        grad = torch.cat([gW.view(G, d, nLR, K).permute(0, 2, 3, 1), R.sum(1)[..., None]], -1)
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


def _accuracy(stream: _Stream, W: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Correctness (G, nLR, N) of every head on a whole stream."""
    G, nLR, K, d1 = W.shape
    d = d1 - 1
    Wm = W[..., :d].permute(0, 3, 1, 2).reshape(G, d, nLR * K)
    out = []
    for s in range(0, stream.n, chunk):
        X, y = stream.rows(np.arange(s, min(s + chunk, stream.n)))
        Z = torch.bmm(X, Wm).view(G, -1, nLR, K) + W[..., d].unsqueeze(1)
        out.append(Z.argmax(-1) == torch.as_tensor(y, device=W.device)[None, :, None])
    return torch.cat(out, 1).permute(0, 2, 1)


def probe_sgd(
    splits: dict,
    layers: list[int],
    *,
    meta: dict,
    sites: list[str],
    lrs=SGD_LRS,
    epochs: float = 10,
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
    n_boot: int = 10_000,
    standardize: bool = True,
) -> list[dict]:
    """The SGD probe protocol on ``splits`` = {train, val, test} caches (or ArraySources)."""
    dev = resolve_device(device)
    train, val, test = (splits[k] for k in ("train", "val", "test"))
    classes = np.unique(np.asarray(train.labels))
    if len(classes) < 2:
        raise IGPTError("the training labels hold a single class; a probe needs at least two")
    K = len(classes)
    G = len(layers)
    if standardize:
        mean, std = feature_stats(train, layers)
    else:
        d = np.asarray(train[layers[0]][:1]).shape[1]
        mean, std = np.zeros((G, 1, d), np.float32), np.ones((G, 1, d), np.float32)
    mean_t, std_t = torch.from_numpy(mean).to(dev), torch.from_numpy(std).to(dev)

    def stream(*sources):
        st = _Stream(sources, layers, mean_t, std_t, dev)
        idx = np.clip(np.searchsorted(classes, st.labels), 0, K - 1)
        if not np.array_equal(classes[idx], st.labels):
            raise IGPTError("a split has labels the training split never shows")
        st.labels = idx
        return st

    base = dict(
        meta,
        probe="sgd",
        backend="torch",
        standardize=standardize,
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
                dict(
                    base,
                    split="val",
                    layer=layers[g],
                    site=sites[g],
                    lr=float(lr),
                    metric="accuracy",
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
    correct = _accuracy(te, W2)[:, 0].cpu().numpy()  # (G, N)
    for g in range(G):
        lo, hi = bootstrap_accuracy_ci(correct[g], n_boot=n_boot, seed=seed)
        rows.append(
            dict(
                base,
                split="test",
                layer=layers[g],
                site=sites[g],
                lr=float(chosen[g, 0]),
                metric="accuracy",
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
    return rows
