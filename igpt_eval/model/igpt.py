"""The iGPT model (Chen et al. 2020), faithful to OpenAI's reference code.

A GPT-2-style pre-norm transformer over palette ids in raster order:

    x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))

with OpenAI's iGPT choices: a norm without mean subtraction or bias, quick-GELU, no dropout,
no linear biases, a separate learned start-of-sequence vector (AR), an untied zero-initialised
output matrix ``wtet``, and learned positions. The same module trains with the autoregressive
(``ar``, causal attention) or the BERT (``bert``, bidirectional, 15% of token embeddings
zeroed) objective; ``config.objective`` picks one.

Shapes in comments: B batch, T sequence (n_px²), C width (n_embd), H heads, k palette size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from igpt_eval.defaults import DEFAULT_SITE
from igpt_eval.errors import IGPTError
from igpt_eval.model import ops
from igpt_eval.model.blocks import Block, KVCache, Norm, StopForward
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.head import pooled_feature
from igpt_eval.model.sites import check_kind, check_layers, valid_layers

#: The seed of BERT feature masks when ``IGPT.features`` is given no generator.
FEATURE_MASK_SEED = 0

#: ``tap(layer, kind, x)`` sees every activation site of a forward pass (see
#: :meth:`IGPT.residual`); it may raise :class:`~igpt_eval.model.blocks.StopForward`.
SiteTap = Callable[[int, str, torch.Tensor], None]


class IGPT(nn.Module):
    """Image GPT. ``model(tokens)`` gives logits over the k palette colours at every pixel.

    For AR, ``tokens`` are an image's palette ids *without* SOS: the model prepends its learned
    ``sos`` vector, so output position t predicts ``tokens[:, t]`` (no shift in the loss).
    """

    def __init__(self, config: IGPTConfig):
        super().__init__()
        self.config = cfg = config
        d, k = cfg.n_embd, cfg.vocab_size
        self.wte = nn.Embedding(k, d)
        self.wpe = nn.Parameter(torch.empty(cfg.n_positions, d))
        # BERT has no start-of-sequence: every position sees its own (possibly masked) token.
        self.sos = nn.Parameter(torch.empty(d)) if cfg.objective == "ar" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = Norm(d, cfg.norm_eps)
        self.wtet = nn.Linear(d, k, bias=False)  # untied from wte, as in iGPT
        self.wclf = nn.Linear(d, cfg.n_classes, bias=cfg.clf_bias) if cfg.n_classes else None
        self.reset_parameters()

    @classmethod
    def initialised(cls, config: IGPTConfig, seed: int = 0) -> IGPT:
        """The network a pretraining run with ``seed`` starts from, bit for bit (its step-0
        snapshot): the random-weights control for that run's architecture. The global RNG
        is left as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """OpenAI's iGPT initialisation."""
        cfg = self.config
        d = cfg.n_embd
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe, std=0.01)
        if self.sos is not None:
            nn.init.normal_(self.sos, std=0.02)
        for blk in self.blocks:
            nn.init.normal_(blk.attn.qkv.weight, std=1 / math.sqrt(d))
            # The out-projection adds to the residual stream n_layer times: scale it down.
            nn.init.normal_(blk.attn.proj.weight, std=1 / math.sqrt(d * cfg.n_layer))
            nn.init.normal_(blk.mlp.fc.weight, std=0.02)
            nn.init.normal_(blk.mlp.proj.weight, std=0.02)
            for m in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc, blk.mlp.proj):
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            blk.ln_1.g.fill_(1.0)
            blk.ln_2.g.fill_(1.0)
        self.ln_f.g.fill_(1.0)
        # Zero heads: training starts from uniform predictions.
        nn.init.zeros_(self.wtet.weight)
        if self.wclf is not None:
            nn.init.zeros_(self.wclf.weight)
            if self.wclf.bias is not None:
                nn.init.zeros_(self.wclf.bias)

    # ------------------------------------------------------------------ inputs
    @property
    def device(self) -> torch.device:
        return self.wpe.device

    def n_params(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.parameters())

    def check_tokens(self, tokens) -> torch.Tensor:
        """Validate palette ids (tensor or array ``[B, T]``); return a long tensor on our device."""
        if isinstance(tokens, np.ndarray):
            if not np.issubdtype(tokens.dtype, np.integer):
                raise IGPTError(f"tokens must be integer palette ids, got dtype {tokens.dtype}")
            tokens = torch.from_numpy(tokens.astype(np.int64, copy=False))
        if not isinstance(tokens, torch.Tensor):
            raise IGPTError(f"tokens must be a tensor or array, got {type(tokens).__name__}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise IGPTError(f"tokens must be integer palette ids, got dtype {tokens.dtype}")
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise IGPTError(f"tokens must have shape [batch, sequence], got {list(tokens.shape)}")
        T, P = tokens.shape[1], self.config.n_positions
        if T > P:
            raise IGPTError(f"sequence of {T} tokens is longer than the model's {P} positions")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise IGPTError(
                f"token id {bad} is outside the palette (0..{self.config.vocab_size - 1})"
            )
        return tokens.to(self.device, torch.long)

    def sample_mask(self, B: int, T: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """BERT mask ``[B, T]`` bool: each position independently with ``config.mask_prob``."""
        gen_device = generator.device if generator is not None else self.device
        u = torch.rand(B, T, generator=generator, device=gen_device)
        return (u < self.config.mask_prob).to(self.device)

    def embed(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Input of block 0: token (or SOS-shifted, or masked) embeddings plus positions."""
        tokens = self.check_tokens(tokens)
        B, T = tokens.shape
        if self.sos is not None:
            if mask is not None:
                raise IGPTError("masks are for BERT models; this model is autoregressive")
            # Position t sees x_{<t}: shift the ids right by one with id k standing for SOS,
            # and look them up in [wte; sos] (cheaper than concatenating activations).
            k = self.config.vocab_size
            ids = torch.cat([tokens.new_full((B, 1), k), tokens[:, :-1]], dim=1)  # (B, T)
            h = F.embedding(ids, torch.cat([self.wte.weight, self.sos[None]]))  # (B, T, C)
            return h + self.wpe[:T]
        h = self.wte(tokens)  # (B, T, C)
        if mask is not None:
            if mask.shape != tokens.shape:
                raise IGPTError(f"mask shape {list(mask.shape)} != tokens {list(tokens.shape)}")
            # A masked position keeps its position embedding; its token embedding is zeroed.
            h = h * (~mask.to(h.device, torch.bool)).unsqueeze(-1).to(h.dtype)
        return h + self.wpe[:T]

    def residual(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        tap: SiteTap | None = None,
        caches: list[KVCache] | None = None,
        h: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The residual stream after the last block, ``(B, T, C)``: every forward pass of the
        model (training, features, classification, sampling) runs its blocks here.

        ``tap(layer, kind, x)`` sees each block's sites in order (``resid_pre``, ``ln_1``,
        ``attn_out``, ``mlp_out``; :mod:`igpt_eval.model.sites`), then ``(n_layer,
        "resid_pre", h)`` for the final stream, on the CPU training path as on the literal
        one, gradients included; it may raise ``StopForward`` to end the pass (the caller
        catches it). ``caches`` (one per block) and ``h`` (the embedded input, in place of
        ``tokens``) serve :meth:`generate`."""
        if h is None:
            h = self.embed(tokens, mask)  # (B, T, C)
        for layer, blk in enumerate(self.blocks):
            cache = None if caches is None else caches[layer]
            block_tap = None if tap is None else (lambda kind, x, i=layer: tap(i, kind, x))
            h = blk(h, cache, block_tap)
        if tap is not None:
            tap(self.config.n_layer, "resid_pre", h)
        return h

    # ------------------------------------------------------------------ training
    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, k]`` over palette ids."""
        return self._head(self.residual(tokens, mask))  # (B, T, k)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """``wtet(ln_f(h))``; in training the norm's gain rides on ``wtet`` (see Block)."""
        if ops.training_path(h):
            return F.linear(ops.rms_norm(h, None, self.ln_f.eps), self.wtet.weight * self.ln_f.g)
        return self.wtet(self.ln_f(h))

    def classify(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, n_classes]``: ``wclf`` on the position-averaged ``ln_f`` output
        (or, when ``config.clf_layer`` names one, on that layer's probe feature)."""
        if self.wclf is None:
            raise IGPTError("this model has no classifier head (config.n_classes is 0)")
        x = pooled_feature(self, tokens, self.config.head_layer, mask)  # (B, d)
        return self.wclf(x)  # (B, n_classes)

    def loss(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        tap: SiteTap | None = None,
    ) -> torch.Tensor:
        """The pretraining loss in nats per token.

        AR: cross-entropy at all n positions. BERT: cross-entropy on masked positions only,
        per image (sum over masked / number masked), then averaged over the batch; a mask is
        drawn from ``generator`` when none is given. ``tap`` sees the sites on the way
        (:meth:`residual`): fine-tuning's joint objective reads its head's feature there.
        """
        tokens = self.check_tokens(tokens)
        if self.sos is not None:
            logits = self._head(self.residual(tokens, tap=tap))  # (B, T, k)
            return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        B, T = tokens.shape
        if mask is None:
            mask = self.sample_mask(B, T, generator)
        h = self.residual(tokens, mask, tap=tap)
        # Only masked positions are scored, so only they need the output head.
        logits = self._head(h[mask])  # (M, k)
        ce = F.cross_entropy(logits.float(), tokens[mask], reduction="none")  # (M,)
        image = mask.nonzero()[:, 0]  # which image each masked position belongs to
        per_image = torch.zeros(B, device=ce.device).index_add_(0, image, ce)
        count = mask.sum(1)
        has = count > 0  # an image with nothing masked has no BERT loss
        return (per_image[has] / count[has]).mean()

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def features(
        self,
        tokens,
        layers=None,
        site: str = DEFAULT_SITE,
        *,
        pool: bool = True,
        mask: torch.Tensor | None = None,
        n_masks: int = 1,
        generator: torch.Generator | None = None,
        autocast: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Activations at ``site`` for ``layers`` (default: all), as probes use them.

        Returns ``[n_layers, B, C]`` float32 averaged over positions (``pool=True``; the
        paper's features, pooled in float32), or ``[n_layers, B, T, C]`` (``pool=False``).
        Layer ``l < n_layer`` is block l's input (after ``ln_1`` for the default site),
        layer ``n_layer`` the final ``ln_f`` output; see :mod:`igpt_eval.model.sites`. Nothing past
        the last requested layer is computed, and never the logits.

        BERT models are evaluated masked, as in training: with ``mask`` when given, else the
        pooled features are averaged over ``n_masks`` masks drawn from ``generator``
        (``n_masks=0``: unmasked); without a generator the masks come from a fixed seed
        (:data:`FEATURE_MASK_SEED`), so the same call gives the same features every time.
        ``autocast=torch.bfloat16`` runs the blocks in bf16.
        """
        check_kind(site)
        L = self.config.n_layer
        wanted = check_layers(valid_layers(site, L) if layers is None else layers, site, L)
        tokens = self.check_tokens(tokens)
        if self.sos is None and mask is None and n_masks > 0:
            B, T = tokens.shape
            if generator is None:  # deterministic by default, never the global RNG
                generator = torch.Generator().manual_seed(FEATURE_MASK_SEED)
            masks = [self.sample_mask(B, T, generator) for _ in range(n_masks)]
            return sum(self._features(tokens, wanted, site, pool, m, autocast) for m in masks) / (
                n_masks
            )
        return self._features(tokens, wanted, site, pool, mask, autocast)

    def _features(self, tokens, wanted, site, pool, mask, autocast) -> torch.Tensor:
        L = self.config.n_layer
        slot = {layer: i for i, layer in enumerate(wanted)}
        B, T = tokens.shape
        C = self.config.n_embd
        out = torch.empty(len(wanted), B, *(() if pool else (T,)), C, device=self.device)

        def keep(layer: int, x: torch.Tensor) -> None:
            # Pool in float32 whatever the compute dtype.
            out[slot[layer]] = x.mean(1, dtype=torch.float32) if pool else x.float()

        if autocast is not None:
            ctx = torch.autocast(self.device.type, dtype=autocast)
        else:
            ctx = nullcontext()
        last = wanted[-1]

        def tap(layer: int, kind: str, x: torch.Tensor) -> None:
            if layer in slot and layer < L and kind == site:
                keep(layer, x)
                if layer == last:
                    raise StopForward  # nothing past the last requested layer

        with ctx:
            try:
                h = self.residual(tokens, mask, tap=tap)
            except StopForward:
                return out
            keep(L, self.ln_f(h) if site == "ln_1" else h)
        return out

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        n: int | None = None,
        prefix=None,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Sample whole images (``n`` of them) or complete ``prefix`` (``[B, P]`` palette ids,
        e.g. the top rows of images). Returns ``[B, n_px²]`` ids; decode with a Palette.

        ``temperature=0`` is greedy; ``top_k`` keeps the k most likely colours; ``seed`` makes
        the draw reproducible. Uses a KV cache: one position per step.
        """
        if self.sos is None:
            raise IGPTError("sampling needs an autoregressive model; this one is BERT")
        if temperature < 0 or (top_k is not None and top_k < 1):
            raise IGPTError("temperature must be >= 0 and top_k >= 1")
        cfg, dev = self.config, self.device
        if prefix is None:
            if n is None or n < 1:
                raise IGPTError("give n >= 1 images to sample, or a prefix to complete")
            prefix = torch.zeros(n, 0, dtype=torch.long, device=dev)
        else:
            prefix = self.check_tokens(prefix)
        B, P = prefix.shape
        T = cfg.n_positions
        if P >= T:
            raise IGPTError(f"prefix of {P} tokens leaves nothing to sample (image has {T})")
        g = torch.Generator(dev)
        g.manual_seed(seed if seed is not None else int(torch.randint(2**62, ())))
        out = torch.empty(B, T, dtype=torch.long, device=dev)
        out[:, :P] = prefix
        hd = cfg.n_embd // cfg.n_head
        caches = [KVCache(B, cfg.n_head, T, hd, self.wpe) for _ in self.blocks]
        # First step: SOS and the whole prefix at once; then one position per step.
        h = torch.cat([self.sos.expand(B, 1, -1), self.wte(prefix)], 1) + self.wpe[: P + 1]
        for t in range(P, T):
            h = self.residual(None, h=h, caches=caches)
            logits = self.wtet(self.ln_f(h[:, -1])).float()  # (B, k)
            out[:, t] = _sample(logits, temperature, top_k, g)
            if t + 1 < T:
                h = (self.wte(out[:, t]) + self.wpe[t + 1]).unsqueeze(1)  # (B, 1, C)
        return out


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, g) -> torch.Tensor:
    """Draw one id per row of ``logits [B, k]``."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs.to(g.device), 1, generator=g).squeeze(1).to(logits.device)
