"""Batched L-BFGS for multinomial logistic regression, in torch (CPU or GPU).

One call fits many independent problems at once: G feature sets (e.g. the layers of a model)
× nC regularisation strengths each, all sharing the labels. Each problem minimises exactly
scikit-learn's ``LogisticRegression(C=…)`` objective (multinomial, L2 on the weights, free
intercept), written per sample so that values are comparable across data sizes:

    f(W, b) = mean_i CE(softmax(W x_i + b), y_i) + ||W||² / (2 C N)

Why it is fast:

- the problems of one feature set share X, so an iteration reads X once for all of that
  set's live problems (two products: X·D for the search direction, Xᵀ·R for the gradient)
  instead of once per problem, and every set's products go in one batched matmul
  (:class:`_Layout`): the sets' own small matmuls, one after another, were half the solve;
- the line search costs no matmul: along D the logits are ``Z + t·(X D)``, so trying a
  step is element-wise work on cached logits, and the accepted trial's softmax is the
  gradient's: the logits are exponentiated once per iteration;
- problems are compacted as they finish: the state of the finished ones is dropped, so each
  iteration works only on live problems and a slow one (large C) does not make the
  converged ones pay;
- logits are laid out (problem, class, row): the softmax over the K classes is then
  element-wise work over long contiguous rows, not a reduction over a tiny inner axis;
- the curvature of the features is known before the first step: each problem's initial
  inverse Hessian is ``(Σ + λ I)⁻¹`` (Σ the feature set's covariance, λ the problem's
  regularisation scaled to the softmax's curvature), not the identity. Transformer features
  are strongly collinear, which plain L-BFGS pays for with hundreds of iterations and, at
  weak regularisation, no convergence at all. The preconditioner changes the path, never
  the objective or its optimum.

Every problem keeps its own curvature history, step length and stopping test. Convergence is
reported per problem (iterations, final max-abs gradient, converged flag) as data, never as a
warning. The stopping test has two parts, both required:

- scipy's, which scikit-learn uses: the largest absolute gradient entry at most ``tol``;
- the estimated distance to the optimum, ``f − f* ≈ ½ ∇fᵀ H⁻¹ ∇f`` with the
  preconditioner standing in for ``H⁻¹``, at most ``gap_tol`` nats. The gradient test alone
  is not scale-aware: on collinear features a small gradient entry along a direction of tiny
  curvature leaves a lot of objective on the table, and warm starts along a C path then take
  no step at all at weak regularisation. The estimate is low where the softmax is confident,
  so the tolerance is tight (docs/design.md, "Probes", has the measurements behind both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from igpt_eval.errors import IGPTError
from igpt_eval.settings import Settings

GAP_TOL = 1e-8  # the second stopping test's bound, nats (module docstring: why so tight)


@dataclass
class LBFGSResult:
    """Solutions of G × nC problems; tensors are on the CPU, shapes in comments."""

    coef: torch.Tensor  # (G, nC, K, d)
    intercept: torch.Tensor  # (G, nC, K)
    loss: torch.Tensor  # (G, nC) objective value f at the solution
    grad_norm: torch.Tensor  # (G, nC) max |∇f| at the solution
    n_iter: torch.Tensor  # (G, nC) iterations used
    converged: torch.Tensor  # (G, nC) bool: both stopping tests passed


class _Layout:
    """Where each live problem sits in a padded batch (Gl, c, …): its feature set's slot
    among the live sets and its place in that set's block of at most c problems.

    The live problems (sorted by feature set) are laid out so that one batched matmul per
    product serves every set: a set's X is read once per product for all of its problems,
    and the G sets' small matmuls become one ``bmm`` (one small matmul per set left the
    second core idle and re-read the per-set call overhead G times). When every live set
    has the same number of problems (the C path, the refit) the padded batch is a view of
    the problems' own tensors, with no copy; otherwise finished problems leave zero rows.
    """

    def __init__(self, layer: torch.Tensor):
        sets, counts = torch.unique_consecutive(layer, return_counts=True)
        self.sets = sets  # (Gl,) the live feature sets
        self.c = int(counts.max())
        self.uniform = bool((counts == self.c).all())
        starts = counts.cumsum(0) - counts
        self.slot = torch.repeat_interleave(torch.arange(len(sets), device=layer.device), counts)
        self.pos = torch.arange(len(layer), device=layer.device) - starts[self.slot]

    def pad(self, T: torch.Tensor) -> torch.Tensor:
        """(P', K, m) per problem → (Gl, c·K, m) per live set."""
        P, K, m = T.shape
        if self.uniform:
            return T.contiguous().view(len(self.sets), self.c * K, m)
        out = T.new_zeros(len(self.sets), self.c, K, m)
        out[self.slot, self.pos] = T
        return out.view(len(self.sets), self.c * K, m)

    def unpad(self, T: torch.Tensor, K: int) -> torch.Tensor:
        """(Gl, c·K, m) per live set → (P', K, m) per problem."""
        T = T.view(len(self.sets), self.c, K, -1)
        if self.uniform:
            return T.view(-1, K, T.shape[-1])
        return T[self.slot, self.pos]


class _Preconditioner:
    """Each problem's initial inverse Hessian for the weights: ``(Σ_g + λ_p I)⁻¹``, applied
    as ``V_g diag(1 / (e_g + λ_p)) V_gᵀ`` from the eigendecomposition of its feature set's
    covariance Σ_g = V_g diag(e_g) V_gᵀ; the intercept's entry is 1.

    The weights' Hessian is roughly ``c Σ + I/(C N)`` with c the softmax's curvature
    ``p(1 − p)``, about 1/K; so λ = K/(C N). λ is floored at 1e-6 of the largest eigenvalue:
    the directions below that carry no data (rounding noise), and the floor keeps a step
    from shooting along them.
    """

    def __init__(self, X: torch.Tensor, inv_cn: torch.Tensor, layer: torch.Tensor, K: int):
        Xc = X - X.mean(1, keepdim=True)  # (G, N, d)
        cov = (Xc.transpose(1, 2) @ Xc).double() / X.shape[1]  # (G, d, d)
        e, V = torch.linalg.eigh(cov)  # float64: the small eigenvalues are what matters
        e = e.clamp_min(0)
        lam = torch.maximum(K * inv_cn.double(), 1e-6 * e[layer, -1])  # (P,)
        self.K = K
        self.V = V.to(X.dtype)  # (G, d, d)
        self.scale = (1.0 / (e[layer] + lam[:, None])).to(X.dtype)  # (P, d)

    def keep(self, mask: torch.Tensor, lay: _Layout) -> None:
        """Drop the finished problems' scales and follow the live problems' new layout."""
        self.scale = self.scale[mask]
        self.relayout(lay)

    def relayout(self, lay: _Layout) -> None:
        """The live sets' eigenbases (Gl, d, d) and the scales padded to the layout
        (Gl, c, 1, d), for :meth:`apply`."""
        self.lay = lay
        self.Vl = self.V if len(lay.sets) == len(self.V) else self.V[lay.sets]
        self.scale_p = lay.pad(self.scale[:, None]).view(len(lay.sets), lay.c, 1, -1)

    def gap(self, g: torch.Tensor, Pg: torch.Tensor) -> torch.Tensor:
        """Each live problem's estimated distance to the optimum (P',), in nats, from its
        gradient and ``Pg = apply(g)``: ``f − f* ≈ ½ ∇fᵀ H⁻¹ ∇f`` with ``H⁻¹ ≈ K·H0`` (the
        Hessian is about ``Σ/K + I/(CN)``). Where the softmax is confident its curvature is
        below 1/K and this underestimates, so it is a test beside the gradient's, not
        instead of it."""
        return 0.5 * self.K * (g * Pg).sum((-1, -2))

    def apply(self, q: torch.Tensor) -> torch.Tensor:
        """H0 q for q (P', K, d+1): weights through (Σ + λI)⁻¹, the intercept unchanged."""
        lay, K = self.lay, q.shape[1]
        d = q.shape[-1] - 1
        r = torch.bmm(lay.pad(q[..., :d]), self.Vl)  # (Gl, c·K, d) in the eigenbasis
        r = (r.view(len(lay.sets), lay.c, K, d) * self.scale_p).view(len(lay.sets), -1, d)
        w = lay.unpad(torch.bmm(r, self.Vl.mT), K)  # (P', K, d)
        return torch.cat([w, q[..., d:]], -1)


class _Problems:
    """Data shared by the problems: feature sets X (G, N, d), labels, and the layout of the
    live problems (:class:`_Layout`), kept sorted by feature set."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor, K: int):
        self.X = X  # (G, N, d)
        G, self.N, self.d = X.shape
        self.K = K
        self.y = y.view(1, 1, -1)  # (1, 1, N) for gathering the true-class logit
        self.onehot = torch.nn.functional.one_hot(y, K).T.to(X.dtype)  # (K, N)
        self.sets = None

    def relayout(self, layer: torch.Tensor) -> _Layout:
        """The layout of the live problems' feature sets ``layer`` (P',), sorted; the live
        sets' features are gathered (a copy) only when that set of sets changes."""
        lay = _Layout(layer)
        if self.sets is None or not torch.equal(lay.sets, self.sets):
            self.sets = lay.sets
            self.Xl = self.X if len(lay.sets) == self.X.shape[0] else self.X[lay.sets]
        self.lay = lay
        return lay

    def xw(self, W: torch.Tensor) -> torch.Tensor:
        """Logits W_p X_pᵀ + b_p: (P', K, N) from W (P', K, d+1)."""
        lay, d = self.lay, self.d
        Z = torch.baddbmm(lay.pad(W[..., d:]), lay.pad(W[..., :d]), self.Xl.mT)
        return lay.unpad(Z, self.K)  # (Gl, c·K, N) → (P', K, N)

    def xtr(self, R: torch.Tensor) -> torch.Tensor:
        """R_p X_p per problem: (P', K, d) from residuals R (P', K, N)."""
        return self.lay.unpad(torch.bmm(self.lay.pad(R), self.Xl), self.K)

    def value(
        self, Z: torch.Tensor, W: torch.Tensor, inv_cn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """f (P',) and the softmax (P', K, N) from logits Z (P', K, N) and weights W
        (P', K, d+1): the line search's trial step hands its softmax on to the gradient, so
        an iteration exponentiates the logits once."""
        m = Z.amax(1, keepdim=True)  # (P', 1, N)
        E = (Z - m).exp_()
        s = E.sum(1, keepdim=True)  # (P', 1, N)
        lse = s.log()[:, 0] + m[:, 0]  # (P', N)
        zy = Z.gather(1, self.y.expand(Z.shape[0], 1, -1))[:, 0]  # (P', N)
        ce = (lse - zy).mean(-1)
        return ce + 0.5 * inv_cn * W[..., : self.d].square().sum((-1, -2)), E.div_(s)

    def grad(self, prob: torch.Tensor, W: torch.Tensor, inv_cn: torch.Tensor) -> torch.Tensor:
        """∇f (P', K, d+1) at W from its softmax ``prob`` (P', K, N)."""
        R = prob.sub_(self.onehot).div_(self.N)  # (P', K, N), in place: prob is spent
        gW = self.xtr(R).add_(inv_cn[:, None, None] * W[..., : self.d])
        return torch.cat([gW, R.sum(-1, keepdim=True)], -1)


@dataclass(frozen=True)
class LBFGSOptions(Settings):
    """How :func:`fit_lbfgs` solves: when a problem stops, and how each iteration searches."""

    max_iter: int = 1000  # iterations per problem: a cap (a stalled problem stops sooner)
    tol: float = 1e-4  # the largest gradient entry a converged problem may keep
    gap_tol: float | None = GAP_TOL  # estimated distance to the optimum, nats (None: no test)
    history: int = 10  # curvature pairs kept
    max_ls: int = 30  # line-search steps per iteration
    precondition: bool = True  # curvature from the features' covariance (False: identity)
    KIND: ClassVar[str] = "L-BFGS option"


def fit_lbfgs(
    X: torch.Tensor,
    y: torch.Tensor,
    C: torch.Tensor,
    n_classes: int,
    *,
    init: torch.Tensor | None = None,
    options: LBFGSOptions | None = None,
) -> LBFGSResult:
    """Fit G × nC multinomial logistic regressions by L-BFGS.

    ``X`` (G, N, d) features (the solve runs in X's dtype and on its device), ``y`` (N,)
    labels in 0..K-1, ``C`` (G, nC) inverse regularisation per problem (each feature set may
    have its own values), ``init`` (G, nC, K, d+1) a warm start (weights, then intercept).
    ``options`` (:class:`LBFGSOptions`): the stopping tests (module docstring) and the search;
    without the preconditioner the initial curvature is the identity, as in textbook L-BFGS.
    """
    o = options or LBFGSOptions()
    max_iter, tol, gap_tol = o.max_iter, o.tol, o.gap_tol
    history, max_ls, precondition = o.history, o.max_ls, o.precondition
    if X.ndim != 3 or C.ndim != 2 or C.shape[0] != X.shape[0]:
        raise IGPTError(f"X must be (G, N, d) and C (G, nC); got {list(X.shape)}, {list(C.shape)}")
    if not bool((C > 0).all()):
        raise IGPTError("regularisation C must be > 0")
    dev, dt = X.device, X.dtype
    G, N, d = X.shape
    nC, K = C.shape[1], n_classes
    P, n = G * nC, K * (d + 1)
    prob = _Problems(X, y.to(dev), K)
    # Results, written back as problems finish.
    W_out = (
        torch.zeros(P, K, d + 1, device=dev, dtype=dt)
        if init is None
        else (init.to(dev, dt).reshape(P, K, d + 1).clone())
    )
    f_out = torch.zeros(P, device=dev, dtype=dt)
    g_out = torch.zeros(P, device=dev, dtype=dt)
    ok_out = torch.zeros(P, dtype=torch.bool, device=dev)
    it_out = torch.zeros(P, dtype=torch.long, device=dev)

    # State of the live problems only (problem ids in ``ids``, sorted by feature set).
    ids = torch.arange(P, device=dev)
    layer = ids // nC
    inv_cn = (1.0 / (C.to(dev, dt) * N)).reshape(-1)  # weight of ½||W||² per problem
    lay = prob.relayout(layer)
    pre = _Preconditioner(X, inv_cn, layer, K) if precondition else None
    if pre is not None:
        pre.relayout(lay)
    W = W_out.clone()
    Z = prob.xw(W)  # (P, K, N) cached logits
    f, p = prob.value(Z, W, inv_cn)  # (P,), (P, K, N)
    g = prob.grad(p, W, inv_cn)  # (P, K, d+1)
    gmax = g.abs().amax((-1, -2))
    Pg = None if pre is None else pre.apply(g)  # H0 ∇f: the gap test's and γ's
    gap = None if Pg is None or gap_tol is None else pre.gap(g, Pg)
    n_iter = torch.zeros(P, dtype=torch.long, device=dev)
    stalled = torch.zeros(P, dtype=torch.bool, device=dev)
    # Curvature pairs, oldest first; a zero pair (rho = 0) carries no information.
    S = torch.zeros(0, P, n, device=dev, dtype=dt)
    Yc = torch.zeros(0, P, n, device=dev, dtype=dt)
    rho = torch.zeros(0, P, device=dev, dtype=dt)
    gamma = torch.ones(P, device=dev, dtype=dt)  # initial inverse-Hessian scale
    slack_eps = 8 * torch.finfo(dt).eps
    first = True

    while True:
        ok = gmax <= tol if gap is None else (gmax <= tol) & (gap <= gap_tol)
        done = ok | stalled | (n_iter >= max_iter)
        if bool(done.any()):  # write the finished problems back and drop their state
            fin = ids[done]
            ok_out[fin] = ok[done]
            W_out[fin], f_out[fin], g_out[fin], it_out[fin] = (
                W[done],
                f[done],
                gmax[done],
                n_iter[done],
            )
            keep = ~done
            ids, layer, inv_cn = ids[keep], layer[keep], inv_cn[keep]
            W, Z, f, g, gmax = W[keep], Z[keep], f[keep], g[keep], gmax[keep]
            gap = None if gap is None else gap[keep]
            Pg = None if Pg is None else Pg[keep]
            n_iter, stalled, gamma = n_iter[keep], stalled[keep], gamma[keep]
            S, Yc, rho = S[:, keep], Yc[:, keep], rho[:, keep]
            if ids.numel() == 0:
                break
            lay = prob.relayout(layer)
            if pre is not None:
                pre.keep(keep, lay)
        L = ids.numel()

        # Two-loop recursion: D = -H ∇f, batched over the live problems.
        q = g.reshape(L, n).clone()
        alphas = []
        for j in range(S.shape[0] - 1, -1, -1):
            a = rho[j] * (S[j] * q).sum(-1)
            q -= a[:, None] * Yc[j]
            alphas.append(a)
        if pre is None:
            q *= gamma[:, None]
        else:
            q = pre.apply(q.view_as(g)).reshape(L, n).mul_(gamma[:, None])
        for j, a in zip(range(S.shape[0]), reversed(alphas), strict=True):
            q += (a - rho[j] * (Yc[j] * q).sum(-1))[:, None] * S[j]
        D = -q.view_as(g)
        slope = (D * g).sum((-1, -2))
        bad = slope >= 0  # stale curvature gave no descent direction: use -∇f
        D = torch.where(bad[:, None, None], -g, D)
        slope = torch.where(bad, -(g * g).sum((-1, -2)), slope)
        # The very first step is scaled down as scipy does, so it is not absurdly long.
        t = torch.ones(L, device=dev, dtype=dt)
        if first:
            t = torch.clamp(1.0 / g.abs().sum((-1, -2)).clamp_min(1e-12), max=1.0)
            first = False

        # Backtracking (Armijo) line search: logits move linearly along D, so one matmul
        # serves every trial step. A few ulps of slack stop it stalling on rounding noise
        # near the optimum (a standard non-monotone safeguard). The accepted trial's logits
        # and softmax are kept for the gradient.
        dZ = prob.xw(D)  # (P', K, N): the logits' change per unit step
        pending = torch.ones(L, dtype=torch.bool, device=dev)
        f_new = f.clone()
        slack = slack_eps * f.abs()
        Zn = pn = None
        for _ls in range(max_ls):
            Zt = Z + t[:, None, None] * dZ
            ft, pt = prob.value(Zt, W + t[:, None, None] * D, inv_cn)
            ok = pending & (ft <= f + 1e-4 * t * slope + slack)
            if Zn is None:  # the first trial: most problems take it
                Zn, pn = Zt, pt
            else:
                Zn[ok], pn[ok] = Zt[ok], pt[ok]
            f_new = torch.where(ok, ft, f_new)
            pending &= ~ok
            if not bool(pending.any()):
                break
            t = torch.where(pending, t * 0.5, t)
        t = torch.where(pending, torch.zeros_like(t), t)  # failed searches stay put
        Wn = W + t[:, None, None] * D
        gn = prob.grad(pn, Wn, inv_cn)
        if bool(pending.any()):  # those stay at W: its logits and gradient
            Zn[pending], gn[pending] = Z[pending], g[pending]

        s_vec = (Wn - W).reshape(L, n)
        y_vec = (gn - g).reshape(L, n)
        sy, yy = (s_vec * y_vec).sum(-1), (y_vec * y_vec).sum(-1)
        good = ~pending & (sy > 1e-10 * yy.clamp_min(1e-30))
        r_new = torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        old = S.shape[0] - history + 1  # drop the oldest pair once the history is full
        S = torch.cat([S[max(old, 0) :], (s_vec * good[:, None])[None]])
        Yc = torch.cat([Yc[max(old, 0) :], (y_vec * good[:, None])[None]])
        rho = torch.cat([rho[max(old, 0) :], r_new[None]])
        if pre is not None:  # scale H0 = γ·P by the newest pair: γ = sᵀy / yᵀPy, with
            Pgn = pre.apply(gn)  # P y = P ∇f_new − P ∇f (P is linear): one apply, not two
            yy = (y_vec * (Pgn - Pg).reshape(L, n)).sum(-1)
            Pg = Pgn
        gamma = torch.where(good, sy / yy.clamp_min(1e-30), gamma)

        f = torch.where(pending, f, f_new)
        W, Z, g = Wn, Zn, gn
        n_iter += 1
        gmax = g.abs().amax((-1, -2))
        if gap is not None:
            gap = pre.gap(g, Pg)
        stalled |= pending

    shape = (G, nC)
    return LBFGSResult(
        coef=W_out[..., :d].reshape(G, nC, K, d).cpu(),
        intercept=W_out[..., d].reshape(G, nC, K).cpu(),
        loss=f_out.reshape(shape).cpu(),
        grad_norm=g_out.reshape(shape).cpu(),
        n_iter=it_out.reshape(shape).cpu(),
        converged=ok_out.reshape(shape).cpu(),
    )
