"""The transformer block of iGPT and its parts: the norm, attention (with a KV cache for
sampling), the quick-GELU MLP, and the pre-norm block, in the literal form and the form
arranged for training speed (see :mod:`igpt_eval.model.ops`).

Shapes in comments: B batch, T sequence (n_px²), C width (n_embd), H heads.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from igpt_eval.model import ops
from igpt_eval.model.config import IGPTConfig

#: Sees a block's activation sites as they are computed: ``tap(kind, x)`` with ``kind`` one of
#: ``resid_pre`` (the block's input), ``ln_1``, ``attn_out``, ``mlp_out`` (see
#: :mod:`igpt_eval.model.sites`), in that order, on the literal and the training path alike.
#: It may raise :class:`StopForward` to end the forward pass there.
Tap = Callable[[str, torch.Tensor], None]


class StopForward(Exception):
    """Raised by a tap to end a forward pass once it has what it needs."""


class Norm(nn.Module):
    """OpenAI's iGPT norm: ``x * rsqrt(mean(x²) + eps) * g``. No mean subtraction, no bias."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.g = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.g, self.eps)


class KVCache:
    """Keys and values of one attention layer during generation, preallocated to length T."""

    def __init__(self, B: int, H: int, T: int, hd: int, like: torch.Tensor):
        self.k = like.new_empty(B, H, T, hd)
        self.v = like.new_empty(B, H, T, hd)
        self.n = 0  # positions filled

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        self.k[:, :, self.n : self.n + t] = k
        self.v[:, :, self.n : self.n + t] = v
        self.n += t
        return self.k[:, :, : self.n], self.v[:, :, : self.n]


class Attention(nn.Module):
    """Multi-head self-attention; causal for AR, bidirectional for BERT. q|k|v in one matmul."""

    def __init__(self, cfg: IGPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.causal = cfg.objective == "ar"
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        if cache is None:
            return self.proj(ops.self_attention(self.qkv(x), self.n_head, self.causal))
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 × (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache.n and T > 1:
            raise RuntimeError("a KV cache extends one position at a time")
        # A single new query may see every cached position, so no mask is needed then.
        causal = self.causal and cache.n == 0
        k, v = cache.append(k, v)  # (B, H, t, hd)
        # SDPA scales by 1/sqrt(head_dim), as iGPT does.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and T > 1)  # (B, H, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


# quick-GELU's sigmoid slope (OpenAI's iGPT and GPT-2 code): gelu(x) ≈ x * sigmoid(1.702 x).
GELU_SLOPE = 1.702


class MLP(nn.Module):
    """d → 4d → d with quick-GELU, ``x * sigmoid(1.702 x)``."""

    def __init__(self, cfg: IGPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, T, 4C)
        return self.proj(h * torch.sigmoid(GELU_SLOPE * h))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: IGPTConfig):
        super().__init__()
        self.ln_1 = Norm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ln_2 = Norm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, tap: Tap | None = None
    ) -> torch.Tensor:
        if tap is not None:
            tap("resid_pre", x)
        if cache is None and ops.training_path(x):
            return self._train_forward(x, tap)
        x_ln = self.ln_1(x)  # (B, T, C)
        if tap is not None:
            tap("ln_1", x_ln)
        a = self.attn(x_ln, cache)
        if tap is not None:
            tap("attn_out", a)
        x = x + a
        m = self.mlp(self.ln_2(x))
        if tap is not None:
            tap("mlp_out", m)
        return x + m

    def _train_forward(self, x: torch.Tensor, tap: Tap | None = None) -> torch.Tensor:
        """The same block, arranged for training speed. Scalings that the literal form spends a
        pass over the activations on are moved onto the weights of the matmul that follows:
        the norms' gains (``linear(x̂·g, W) = linear(x̂, W·g)``), and quick-GELU's slope, which
        makes it ``silu(1.702 h) / 1.702``, one fused kernel each way. A tap on ``ln_1`` costs
        the one pass the fold saves (``x̂·g`` is made for it)."""
        attn, mlp = self.attn, self.mlp
        x_hat = ops.rms_norm(x, None, self.ln_1.eps)  # (B, T, C), gain folded below
        if tap is not None:
            tap("ln_1", x_hat * self.ln_1.g)
        qkv = F.linear(x_hat, attn.qkv.weight * self.ln_1.g, attn.qkv.bias)  # (B, T, 3C)
        a = attn.proj(ops.self_attention(qkv, attn.n_head, attn.causal))
        if tap is not None:
            tap("attn_out", a)
        x = x + a
        x_hat = ops.rms_norm(x, None, self.ln_2.eps)
        fc_b = mlp.fc.bias * GELU_SLOPE if mlp.fc.bias is not None else None
        u = F.linear(x_hat, mlp.fc.weight * (self.ln_2.g * GELU_SLOPE), fc_b)  # 1.702 h: (B, T, 4C)
        m = F.linear(F.silu(u), mlp.proj.weight * (1 / GELU_SLOPE), mlp.proj.bias)
        if tap is not None:
            tap("mlp_out", m)
        return x + m
