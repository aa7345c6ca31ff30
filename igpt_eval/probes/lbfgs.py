"""Batched L-BFGS for multinomial logistic regression, in torch (CPU or GPU).

One call fits many independent problems at once: G feature sets (e.g. the layers of a model)
× nC regularisation strengths each, all sharing the labels. Each problem minimises exactly
scikit-learn's ``LogisticRegression(C=…)`` objective (multinomial, L2 on the weights, free
intercept), written per sample so that values are comparable across data sizes:

    f(W, b) = mean_i CE(softmax(W x_i + b), y_i) + ||W||² / (2 C N)

Why it is fast:

- the problems of one feature set share X, so an iteration reads X once for all of that
  set's live problems (two matmuls: X·D for the search direction, Xᵀ·R for the gradient)
  instead of once per problem;
- the line search costs no matmul: along D the logits are ``Z + t·(X D)``, so trying a
  step is element-wise work on cached logits;
- problems are compacted as they finish: each iteration works only on the live ones, so a
  slow problem (large C) does not make the converged ones pay.

Every problem keeps its own curvature history, step length and stopping test. Convergence is
reported per problem (iterations, final max-abs gradient, converged flag) as data, never as a
warning. The stopping test is scipy's, which scikit-learn uses: the largest absolute
gradient entry at most ``tol``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from igpt_eval.errors import IGPTError


@dataclass
class LBFGSResult:
    """Solutions of G × nC problems; tensors are on the CPU, shapes in comments."""

    coef: torch.Tensor  # (G, nC, K, d)
    intercept: torch.Tensor  # (G, nC, K)
    loss: torch.Tensor  # (G, nC) objective value f at the solution
    grad_norm: torch.Tensor  # (G, nC) max |∇f| at the solution
    n_iter: torch.Tensor  # (G, nC) iterations used
    converged: torch.Tensor  # (G, nC) bool: grad_norm <= tol


class _Problems:
    """Shared data of the flat problem list: problem p uses feature set ``layer[p]``."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, C: torch.Tensor, K: int):
        self.X = X  # (G, N, d)
        G, self.N, self.d = X.shape
        self.K, self.nC = K, C.shape[1]
        self.onehot = torch.nn.functional.one_hot(y, K).to(X.dtype)  # (N, K)
        self.inv_cn = (1.0 / (C * self.N)).reshape(-1)  # (P,) weight of ½||W||²
        self.layer = torch.arange(G, device=X.device).repeat_interleave(self.nC)  # (P,)

    def xw(self, W: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Logits X_p W_pᵀ + b_p of problems ``idx``: (N, P', K) from W (P', K, d+1)."""
        out = W.new_empty(self.N, len(idx), self.K)
        for g, cols in self._by_layer(idx):
            Wg = W[cols, :, : self.d].reshape(-1, self.d)  # (n·K, d)
            out[:, cols] = (self.X[g] @ Wg.T).view(self.N, -1, self.K)
        return out + W[:, :, self.d]  # + b (P', K)

    def xtr(self, R: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Xᵀ R per problem: (P', K, d) from residuals R (N, P', K)."""
        out = R.new_empty(len(idx), self.K, self.d)
        for g, cols in self._by_layer(idx):
            out[cols] = (R[:, cols].reshape(self.N, -1).T @ self.X[g]).view(-1, self.K, self.d)
        return out

    def _by_layer(self, idx: torch.Tensor):
        """(feature set, positions in ``idx``) for each feature set with live problems."""
        lay = self.layer[idx]
        for g in torch.unique(lay).tolist():
            yield g, (lay == g).nonzero().squeeze(1)

    def value(self, Z, W, inv_cn) -> torch.Tensor:
        """f (P',) from logits Z (N, P', K) and weights W (P', K, d+1)."""
        ce = torch.logsumexp(Z, -1) - (Z * self.onehot[:, None]).sum(-1)  # (N, P')
        return ce.mean(0) + 0.5 * inv_cn * W[..., : self.d].square().sum((-1, -2))

    def grad(self, Z, W, inv_cn, idx) -> torch.Tensor:
        """∇f (P', K, d+1) at W from its logits Z."""
        R = (torch.softmax(Z, -1) - self.onehot[:, None]) / self.N  # (N, P', K)
        gW = self.xtr(R, idx) + inv_cn[:, None, None] * W[..., : self.d]
        return torch.cat([gW, R.sum(0).unsqueeze(-1)], -1)


def fit_lbfgs(
    X: torch.Tensor,
    y: torch.Tensor,
    C: torch.Tensor,
    n_classes: int,
    *,
    max_iter: int = 1000,
    tol: float = 1e-4,
    history: int = 10,
    init: torch.Tensor | None = None,
    max_ls: int = 30,
) -> LBFGSResult:
    """Fit G × nC multinomial logistic regressions by L-BFGS.

    ``X`` (G, N, d) features (the solve runs in X's dtype and on its device), ``y`` (N,)
    labels in 0..K-1, ``C`` (G, nC) inverse regularisation per problem (each feature set may
    have its own values), ``init`` (G, nC, K, d+1) a warm start (weights, then intercept).
    """
    if X.ndim != 3 or C.ndim != 2 or C.shape[0] != X.shape[0]:
        raise IGPTError(f"X must be (G, N, d) and C (G, nC); got {list(X.shape)}, {list(C.shape)}")
    if not bool((C > 0).all()):
        raise IGPTError("regularisation C must be > 0")
    dev, dt = X.device, X.dtype
    G, N, d = X.shape
    nC, K = C.shape[1], n_classes
    prob = _Problems(X, y.to(dev), C.to(dev, dt), K)
    P = G * nC
    if init is None:
        W = torch.zeros(P, K, d + 1, device=dev, dtype=dt)
    else:
        W = init.to(dev, dt).reshape(P, K, d + 1).clone()
    every = torch.arange(P, device=dev)
    Z = prob.xw(W, every)  # (N, P, K) cached logits
    f = prob.value(Z, W, prob.inv_cn)  # (P,)
    g = prob.grad(Z, W, prob.inv_cn, every)  # (P, K, d+1)
    gmax = g.abs().amax((-1, -2))
    n_iter = torch.zeros(P, dtype=torch.long, device=dev)
    stalled = torch.zeros(P, dtype=torch.bool, device=dev)
    # Curvature pairs, newest last, over all problems (zero rows: no information).
    S: list[torch.Tensor] = []
    Yc: list[torch.Tensor] = []
    rho: list[torch.Tensor] = []
    gamma = torch.ones(P, device=dev, dtype=dt)  # initial inverse-Hessian scale
    slack_eps = 8 * torch.finfo(dt).eps

    for _ in range(max_iter):
        live = ((gmax > tol) & ~stalled & (n_iter < max_iter)).nonzero().squeeze(1)
        if live.numel() == 0:
            break
        Wl, gl, fl, Zl = W[live], g[live], f[live], Z[:, live]
        inv_cn = prob.inv_cn[live]

        # Two-loop recursion: D = -H ∇f, batched over the live problems.
        q = gl.reshape(len(live), -1).clone()
        alphas = []
        for s, yv, r in zip(reversed(S), reversed(Yc), reversed(rho), strict=True):
            s, yv, r = s[live], yv[live], r[live]
            a = r * (s * q).sum(-1)
            q -= a[:, None] * yv
            alphas.append(a)
        q *= gamma[live, None]
        for s, yv, r, a in zip(S, Yc, rho, reversed(alphas), strict=True):
            s, yv, r = s[live], yv[live], r[live]
            q += (a - r * (yv * q).sum(-1))[:, None] * s
        D = -q.view_as(gl)
        slope = (D * gl).sum((-1, -2))
        bad = slope >= 0  # stale curvature gave no descent direction: use -∇f
        D = torch.where(bad[:, None, None], -gl, D)
        slope = torch.where(bad, -(gl * gl).sum((-1, -2)), slope)
        # The very first step is scaled down as scipy does, so it is not absurdly long.
        t = torch.ones(len(live), device=dev, dtype=dt)
        if not S:
            t = torch.clamp(1.0 / gl.abs().sum((-1, -2)).clamp_min(1e-12), max=1.0)

        # Backtracking (Armijo) line search: logits move linearly along D, so one matmul
        # serves every trial step. A few ulps of slack stop it stalling on rounding noise
        # near the optimum (a standard non-monotone safeguard).
        dZ = prob.xw(D, live)  # (N, P', K)
        pending = torch.ones(len(live), dtype=torch.bool, device=dev)
        f_new = fl.clone()
        slack = slack_eps * fl.abs()
        for _ls in range(max_ls):
            ft = prob.value(Zl + t[:, None] * dZ, Wl + t[:, None, None] * D, inv_cn)
            ok = pending & (ft <= fl + 1e-4 * t * slope + slack)
            f_new = torch.where(ok, ft, f_new)
            pending &= ~ok
            if not bool(pending.any()):
                break
            t = torch.where(pending, t * 0.5, t)
        t = torch.where(pending, torch.zeros_like(t), t)  # failed searches stay put
        Wn = Wl + t[:, None, None] * D
        Zn = Zl + t[:, None] * dZ
        gn = prob.grad(Zn, Wn, inv_cn, live)

        s_vec = (Wn - Wl).reshape(len(live), -1)
        y_vec = (gn - gl).reshape(len(live), -1)
        sy, yy = (s_vec * y_vec).sum(-1), (y_vec * y_vec).sum(-1)
        good = ~pending & (sy > 1e-10 * yy.clamp_min(1e-30))
        pair = [torch.zeros(P, s_vec.shape[1], device=dev, dtype=dt) for _ in range(2)]
        pair[0][live] = s_vec * good[:, None]
        pair[1][live] = y_vec * good[:, None]
        r_full = torch.zeros(P, device=dev, dtype=dt)
        r_full[live] = torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        S.append(pair[0])
        Yc.append(pair[1])
        rho.append(r_full)
        if len(S) > history:
            del S[0], Yc[0], rho[0]
        gamma[live] = torch.where(good, sy / yy.clamp_min(1e-30), gamma[live])

        W[live], g[live], f[live] = Wn, gn, torch.where(pending, fl, f_new)
        Z[:, live] = Zn
        n_iter[live] += 1
        gmax[live] = gn.abs().amax((-1, -2))
        stalled[live] |= pending

    shape = (G, nC)
    return LBFGSResult(
        coef=W[..., :d].reshape(G, nC, K, d).cpu(),
        intercept=W[..., d].reshape(G, nC, K).cpu(),
        loss=f.reshape(shape).cpu(),
        grad_norm=gmax.reshape(shape).cpu(),
        n_iter=n_iter.reshape(shape).cpu(),
        converged=(gmax <= tol).reshape(shape).cpu(),
    )
