"""The training paths of igpt_eval.model.ops and Block against the literal maths and grads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from igpt_eval.model import ops
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.igpt import IGPT


def _value_and_grad(fn, x: torch.Tensor, gy: torch.Tensor):
    x = x.detach().requires_grad_()
    y = fn(x)
    (g,) = torch.autograd.grad(y, x, gy)
    return y.detach(), g


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [16, 12, 10])  # 4 row blocks of 4 and of 3; 10: one block
@pytest.mark.parametrize("score_bytes", [1 << 20, 300])  # one head group, or several
def test_blocked_attention_is_exact_attention(monkeypatch, causal, T, score_bytes):
    # In float64 the blocked kernel must agree with SDPA to rounding, forward and backward.
    monkeypatch.setattr(ops, "SCORE_BYTES", score_bytes)
    g = torch.Generator().manual_seed(T)
    B, H, C = 3, 2, 8
    qkv = torch.randn(B, T, 3 * C, generator=g, dtype=torch.float64)
    gy = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    y, dqkv = _value_and_grad(lambda x: ops._BlockedAttention.apply(x, H, causal), qkv, gy)
    y_ref, dqkv_ref = _value_and_grad(lambda x: ops.sdpa_attention(x, H, causal), qkv, gy)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dqkv, dqkv_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_bf16_training_attention_takes_the_blocked_path_and_stays_close(causal):
    g = torch.Generator().manual_seed(0)
    B, T, H, C = 4, 64, 4, 32
    qkv = torch.randn(B, T, 3 * C, generator=g)
    gy = torch.randn(B, T, C, generator=g)
    x = qkv.bfloat16().requires_grad_()
    y = ops.self_attention(x, H, causal)
    assert y.grad_fn is not None and "BlockedAttention" in type(y.grad_fn).__name__
    (dx,) = torch.autograd.grad(y, x, gy.bfloat16())
    y_ref, dx_ref = _value_and_grad(lambda t: ops.sdpa_attention(t, H, causal), qkv, gy)
    # bf16 keeps 8 bits of mantissa: errors of a few parts in a thousand of the scale.
    torch.testing.assert_close(y.float(), y_ref, rtol=0, atol=0.02 * y_ref.abs().max().item())
    torch.testing.assert_close(dx.float(), dx_ref, rtol=0, atol=0.03 * dx_ref.abs().max().item())
    # Without autograd (inference) the literal SDPA path runs, bit for bit.
    with torch.no_grad():
        assert torch.equal(
            ops.self_attention(x, H, causal), ops.sdpa_attention(x.detach(), H, causal)
        )


@pytest.mark.parametrize("with_gain", [True, False])
def test_rms_norm_training_path_is_exact(with_gain):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 16, generator=g, dtype=torch.float64) * 3
    gain = torch.rand(16, generator=g, dtype=torch.float64).requires_grad_()
    gy = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    w = gain if with_gain else None

    def grads(norm):
        xx = x.clone().requires_grad_()
        y = norm(xx)
        inputs = (xx, gain) if with_gain else (xx,)
        return (y.detach(), *torch.autograd.grad(y, inputs, gy))

    ours = grads(lambda t: ops.rms_norm(t, w, 1e-5))
    ref = grads(lambda t: F.rms_norm(t, (16,), w, 1e-5))
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_folded_norm_writes_the_autocast_dtype():
    x = torch.randn(2, 4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.rms_norm(x, None, 1e-5).dtype == torch.bfloat16
        assert ops.rms_norm(x, torch.ones(8), 1e-5).dtype == torch.float32  # Norm.forward


@pytest.mark.parametrize("objective,bias", [("ar", False), ("bert", False), ("ar", True)])
def test_training_forward_matches_literal_model(objective, bias):
    # Block._train_forward folds the norm gains and quick-GELU's slope into the weights (and
    # the fc bias); in float64 the loss and every parameter's gradient must equal the literal
    # model's.
    cfg = IGPTConfig(
        vocab_size=7, n_px=4, n_embd=16, n_head=2, n_layer=2, objective=objective, bias=bias
    )
    torch.manual_seed(0)
    model = IGPT(cfg).double()
    with torch.no_grad():  # non-trivial gains and head, so that folding them matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tokens = torch.randint(0, 7, (3, cfg.n_positions))
    mask = model.sample_mask(3, cfg.n_positions, torch.Generator().manual_seed(0))
    mask = mask if objective == "bert" else None

    def loss_and_grads():
        model.zero_grad()
        loss = model.loss(tokens, mask)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = loss_and_grads()
    with ops.literal_ops():
        ref_loss, ref_grads = loss_and_grads()
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-9, atol=1e-12, msg=name)


def test_bf16_training_step_follows_float32():
    # The whole bf16 training path (blocked attention, folded norms) against float32 SDPA.
    cfg = IGPTConfig(vocab_size=16, n_px=8, n_embd=32, n_head=2, n_layer=2)
    torch.manual_seed(0)
    model = IGPT(cfg)
    with torch.no_grad():
        model.wtet.weight.normal_(std=0.02)
    tokens = torch.randint(0, 16, (4, cfg.n_positions))

    def grads(bf16: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(tokens)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    loss16, g16 = grads(True)
    loss32, g32 = grads(False)
    assert loss16 == pytest.approx(loss32, abs=1e-2)
    assert F.cosine_similarity(g16, g32, dim=0) > 0.99


def test_literal_ops_switches_the_path_for_its_block_only(monkeypatch):
    from igpt_eval.model.blocks import Block

    model = IGPT(IGPTConfig(vocab_size=7, n_px=4, n_embd=16, n_head=2, n_layer=2))
    tokens = torch.randint(0, 7, (2, 16))
    calls = []
    real = Block._train_forward
    monkeypatch.setattr(Block, "_train_forward", lambda *a: calls.append(1) or real(*a))

    def fast_blocks() -> int:
        calls.clear()
        model.loss(tokens).backward()
        return len(calls)

    assert fast_blocks() == 2  # the default: autograd on the CPU takes the training path
    with ops.literal_ops():
        assert fast_blocks() == 0
        with ops.literal_ops(False):  # an inner block can restore the default
            assert fast_blocks() == 2
        assert fast_blocks() == 0
    with pytest.raises(RuntimeError), ops.literal_ops():
        raise RuntimeError  # an exception leaves the switch as it found it
    assert fast_blocks() == 2
    with torch.no_grad():
        calls.clear()
        model.loss(tokens)
        assert calls == []  # inference: always literal
