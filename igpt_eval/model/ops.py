"""Self-attention and the iGPT norm, each with two paths that compute the same maths.

- the **literal path** (``F.scaled_dot_product_attention``, ``F.rms_norm``) serves inference:
  feature extraction, sampling, evaluation. Its numbers are the ones every cached activation
  and report was made with, so it stays as is;
- the **training path**, taken while autograd records on CPU, is written for speed. A small
  iGPT's CPU training step is bound by passes over activations in memory, not by matmuls:

  * attention: PyTorch's CPU flash kernel gains nothing from bf16 at head size 32 and its
    backward runs far below the matmul rate. :class:`_BlockedAttention` does attention as bf16
    batched matmuls over blocks of heads and query rows small enough to stay in cache, skips
    the key blocks a causal query cannot see, and has its backward written out;
  * norm: autograd's decomposed ``rms_norm`` takes about a dozen passes over the residual
    stream each way; :class:`_RMSNorm` takes two forward and three back when its gain is
    folded into the next matmul's weights, as the model's training forward
    (``Block._train_forward``) does, along with quick-GELU's slope.

``benchmarks/train_step.py`` measures what this buys against Hugging Face's ImageGPT, and
``tests/test_ops.py`` checks each training path against the literal one, values and gradients.

Shapes: B batch, T sequence, C width, H heads, hd = C / H head size, N rows of a norm.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import torch
import torch.nn.functional as F

# Blocks of query rows in causal attention: with 4, the blocks' key prefixes cover 10/16 of
# the full score matrix (the rest is masked anyway); more blocks save less and cost more calls.
ROW_BLOCKS = 4
# Bytes of scores per group of heads: about an L2 cache, so a group's scores stay in cache
# while they are made, softmaxed and used (32 heads × 64 rows × 256 keys in bf16 = 1 MiB).
SCORE_BYTES = 1 << 20
# Above this many bytes of saved probabilities per layer the blocked path is not worth its
# memory (the flash kernel saves none): fall back to SDPA.
MAX_SAVED_BYTES = 1 << 30
# Dtypes the blocked path serves. In float32, SDPA's flash kernel trains as fast (measured on
# the shipped model) and keeps no probabilities.
BLOCKED_DTYPES = (torch.bfloat16, torch.float16)


# Set inside ``literal_ops()``: a context variable, so the switch is scoped to a block of code
# (and to its thread or task), never a process-wide flag read at import.
_LITERAL = contextvars.ContextVar("igpt_eval_literal_ops", default=False)


@contextlib.contextmanager
def literal_ops(enabled: bool = True):
    """Within the block, every op takes the literal path, autograd included (``enabled=False``
    restores the default inside an outer ``literal_ops()``). The literal path is the tests'
    reference and a switch for anyone who suspects the training path; ``pretrain
    --literal-ops`` and ``TrainConfig(literal_ops=True)`` train under it.

        with ops.literal_ops():
            loss = model.loss(tokens)  # F.rms_norm and SDPA, as extraction runs them
    """
    token = _LITERAL.set(enabled)
    try:
        yield
    finally:
        _LITERAL.reset(token)


def training_path(x: torch.Tensor) -> bool:
    """Whether ops on ``x`` take the training path: autograd is recording, on the CPU, and no
    :func:`literal_ops` block is open. (On a GPU, PyTorch's fused norm and flash attention
    are already the fast path.)"""
    return not _LITERAL.get() and torch.is_grad_enabled() and x.device.type == "cpu"


# ---------------------------------------------------------------------------------- norm
def rms_norm(x: torch.Tensor, g: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``x * rsqrt(mean(x², -1) + eps) * g``: iGPT's norm (no mean subtraction, no bias).

    ``g=None`` leaves the gain out, for a caller that folds it into the weights of the matmul
    that follows (``linear(x̂·g, W) = linear(x̂, W·g)``: a multiply over a (C,) row of weights
    instead of over every activation). Such an output only feeds a matmul, so under autocast
    the training path writes it in the autocast dtype at once (the matmul would cast it)."""
    if training_path(x):
        out_dtype = x.dtype
        if g is None and torch.is_autocast_enabled(x.device.type):
            out_dtype = torch.get_autocast_dtype(x.device.type)
        return _RMSNorm.apply(x, g, eps, out_dtype)
    return F.rms_norm(x, (x.shape[-1],), g, eps)


class _RMSNorm(torch.autograd.Function):
    """RMS norm with its backward written out. With ``r = rsqrt(mean(x²) + eps)``,
    ``x̂ = x·r`` and ``y = x̂·g``: ``dg = Σ_rows dy·x̂`` and, with ``u = dy·g·r``,
    ``dx = u - x·r²·mean(u·x)``. Without a gain that is three passes back and two forward."""

    @staticmethod
    def forward(ctx, x, g, eps, out_dtype):
        C, acc = x.shape[-1], torch.promote_types(x.dtype, torch.float32)
        # vector_norm reads x once and writes no (N, C) temporary, unlike x.pow(2).mean().
        ss = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=acc)  # (N, 1)
        r = torch.rsqrt(ss.square_().div_(C).add_(eps))
        ctx.save_for_backward(x, r, g)
        if g is None:  # one pass, straight into the output dtype
            return torch.mul(x, r, out=torch.empty(x.shape, dtype=out_dtype, device=x.device))
        return torch.mul(x, r).mul_(g)

    @staticmethod
    def backward(ctx, dy):
        x, r, g = ctx.saved_tensors
        dg = None
        if g is not None:
            dg = (dy * x * r).flatten(0, -2).sum(0).to(g.dtype)  # (C,)
            dy = dy * g
        xa = x.to(r.dtype)  # no copy for the float32 residual stream
        u = torch.mul(dy, r)  # (N, C), in at least float32 whatever dy's dtype
        coef = torch.linalg.vecdot(u, xa, dim=-1).unsqueeze(-1).mul_(r * r).div_(x.shape[-1])
        return u.addcmul_(xa, coef, value=-1).to(x.dtype), dg, None, None


# ---------------------------------------------------------------------------------- attention
def self_attention(qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor:
    """Multi-head attention of the packed ``q|k|v`` projections ``(B, T, 3C)``; returns
    ``(B, T, C)``, heads concatenated. Scaled by ``1/sqrt(hd)``, as iGPT does."""
    B, T, _ = qkv.shape
    if training_path(qkv) and qkv.dtype in BLOCKED_DTYPES and T > 1:
        # The probabilities it keeps for the backward: row block r of nb holds (r + 1) of nb
        # key blocks, (nb + 1) / (2 nb) of the T x T scores in all (all of them when nb = 1).
        nb = _row_blocks(T, causal)
        saved = B * n_head * T * T * qkv.element_size() * (nb + 1) // (2 * nb)
        if saved <= MAX_SAVED_BYTES:
            return _blocked_attention(qkv, n_head, causal)
    return sdpa_attention(qkv, n_head, causal)


def sdpa_attention(qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor:
    """The literal path of :func:`self_attention`: split the heads, SDPA, concatenate."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in qkv.split(C, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and T > 1)  # (B, H, T, hd)
    return y.transpose(1, 2).reshape(B, T, C)


# torch.compile leaves the kernel whole (a graph break): it is already a sequence of large
# batched matmuls, and tracing its ~20 calls per block would only lengthen compilation.
@torch.compiler.disable
def _blocked_attention(qkv: torch.Tensor, n_head: int, causal: bool) -> torch.Tensor:
    return _BlockedAttention.apply(qkv, n_head, causal)


@functools.lru_cache(maxsize=8)
def _causal_tile(tb: int, dtype: torch.dtype) -> torch.Tensor:
    """``(tb, tb)`` added to a diagonal tile of scores: ``-inf`` above the diagonal, else 0."""
    above = torch.ones(tb, tb, dtype=torch.bool).triu(1)
    return torch.zeros(tb, tb, dtype=dtype).masked_fill_(above, float("-inf"))


def _row_blocks(T: int, causal: bool) -> int:
    """How many blocks of query rows: causal attention skips the keys past each block's last
    row (4 blocks do 10/16 of the full work); bidirectional attention needs one."""
    return ROW_BLOCKS if causal and T % ROW_BLOCKS == 0 else 1


class _BlockedAttention(torch.autograd.Function):
    """Attention as low-precision batched matmuls over cache-sized blocks.

    Queries are cut into row blocks; row block r attends the key prefix ``[:w_r]`` (all keys
    when bidirectional), and only its diagonal tile needs the causal mask. Heads go in groups
    whose scores fit in cache. Every operand is laid out so that each block is one packed
    batch of matrices (CPU ``bmm`` copies any other layout first): queries, outputs and their
    gradients as ``(row block, B·H, rows, hd)``, keys and values as packed copies of each
    prefix.

    Forward, per block: ``S = q kᵀ/√hd`` (+ mask on the diagonal tile), ``P = softmax(S)``,
    ``o = P v``; ``P`` is kept for the backward in the compute dtype, as an eager attention
    under autocast keeps it. Backward: ``dv = Pᵀ do``, ``dP = do vᵀ``, ``dS = P (dP -
    rowsum(dP·P))`` (the softmax backward kernel), ``dq = dS k/√hd``, ``dk = dSᵀ q/√hd``,
    the key-side gradients summed over row blocks. The 1/√hd rides on the matmuls (alpha).
    """

    @staticmethod
    def forward(ctx, qkv, n_head, causal):
        B, T, C3 = qkv.shape
        H, hd = n_head, C3 // 3 // n_head
        BH, nb = B * H, _row_blocks(T, causal)
        tb = T // nb
        scale = 1 / math.sqrt(hd)
        x = qkv.view(B, T, 3, H, hd)
        q = x[:, :, 0].view(B, nb, tb, H, hd).permute(1, 0, 3, 2, 4).reshape(nb, BH, tb, hd)
        k, v = (x[:, :, i].transpose(1, 2).reshape(BH, T, hd) for i in (1, 2))  # (B·H, T, hd)
        widths = [(r + 1) * tb if causal else T for r in range(nb)]
        k_pre = [k[:, :w].contiguous() for w in widths]  # the last is k itself
        v_pre = [v[:, :w].contiguous() for w in widths]
        tile = _causal_tile(tb, qkv.dtype)
        hb = max(1, SCORE_BYTES // (tb * T * qkv.element_size()))  # heads per group
        o = torch.empty(nb, BH, tb, hd, dtype=qkv.dtype)
        probs = []
        for r in range(nb):
            for h0 in range(0, BH, hb):
                hs = slice(h0, h0 + hb)
                s = torch.empty(q[r, hs].shape[0], tb, k_pre[r].shape[1], dtype=qkv.dtype)
                # The scale rides on the matmul (alpha); beta=0 ignores s's contents.
                torch.baddbmm(s, q[r, hs], k_pre[r][hs].transpose(1, 2), beta=0, alpha=scale, out=s)
                if causal:
                    s[:, :, r * tb :].add_(tile)  # the diagonal tile
                p = torch.softmax(s, dim=-1)
                torch.bmm(p, v_pre[r][hs], out=o[r, hs])
                probs.append(p)
        ctx.save_for_backward(q, *k_pre, *v_pre, *probs)
        ctx.dims = (B, T, H, hd, nb, hb, causal, scale)
        return o.view(nb, B, H, tb, hd).permute(1, 0, 3, 2, 4).reshape(B, T, H * hd)

    @staticmethod
    def backward(ctx, dy):
        B, T, H, hd, nb, hb, causal, scale = ctx.dims
        BH, tb = B * H, T // nb
        q, *rest = ctx.saved_tensors
        k_pre, v_pre, probs = rest[:nb], rest[nb : 2 * nb], rest[2 * nb :]
        do = dy.to(q.dtype).view(B, nb, tb, H, hd).permute(1, 0, 3, 2, 4).reshape(nb, BH, tb, hd)
        dq = torch.empty_like(q)
        dk, dv = torch.empty_like(k_pre[-1]), torch.empty_like(v_pre[-1])  # (B·H, T, hd)
        groups = [slice(h0, h0 + hb) for h0 in range(0, BH, hb)]
        # The last row block sees every key: it writes dk and dv; earlier blocks add to them.
        for r in reversed(range(nb)):
            w = k_pre[r].shape[1]
            for g, hs in enumerate(groups):
                p, do_r = probs[r * len(groups) + g], do[r, hs]
                dp = torch.bmm(do_r, v_pre[r][hs].transpose(1, 2))  # (h, tb, w)
                ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
                torch.baddbmm(dq[r, hs], ds, k_pre[r][hs], beta=0, alpha=scale, out=dq[r, hs])
                if r == nb - 1:
                    torch.bmm(p.transpose(1, 2), do_r, out=dv[hs])
                    dk_h = dk[hs]
                    torch.baddbmm(dk_h, ds.transpose(1, 2), q[r, hs], beta=0, alpha=scale, out=dk_h)
                else:
                    dv[hs, :w].add_(torch.bmm(p.transpose(1, 2), do_r))
                    dk[hs, :w].add_(torch.bmm(ds.transpose(1, 2), q[r, hs]), alpha=scale)
        dqkv = torch.empty(B, T, 3, H, hd, dtype=q.dtype)
        dqkv[:, :, 0].view(B, nb, tb, H, hd).copy_(dq.view(nb, B, H, tb, hd).permute(1, 0, 3, 2, 4))
        dqkv[:, :, 1] = dk.view(B, H, T, hd).transpose(1, 2)
        dqkv[:, :, 2] = dv.view(B, H, T, hd).transpose(1, 2)
        return dqkv.view(B, T, 3 * H * hd), None, None
