"""The iGPT model: shapes, init, objectives, features, sampling, checkpoints, bad input."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from igpt_eval import IGPTError
from igpt_eval.model import IGPT, load_model, save_model
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.sites import parse_site, site_name, valid_layers


def make(objective="ar", seed=0, **kw):
    torch.manual_seed(seed)
    model = IGPT(IGPTConfig.preset("tiny", objective=objective, **kw))
    # Zero-initialised heads make every logit equal; randomise them so tests can see changes.
    with torch.no_grad():
        model.wtet.weight.normal_(std=0.5)
        for blk in model.blocks:
            blk.ln_1.g.uniform_(0.5, 1.5)
    return model.eval()


def tokens(B=3, seed=1, k=16, T=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (B, T), generator=g)


def test_paper_parameter_counts():
    # iGPT-S has exactly OpenAI's 76,571,648 parameters; built on meta to stay fast.
    with torch.device("meta"):
        assert IGPT(IGPTConfig.preset("S")).n_params() == 76_571_648
    for name in ("M", "L", "tiny", "mini"):
        cfg = IGPTConfig.preset(name)
        with torch.device("meta"):
            assert IGPT(cfg).n_params() == cfg.n_params()
    assert IGPTConfig.preset("L").n_params() == pytest.approx(1.36e9, rel=0.02)
    assert IGPTConfig.preset("XL").n_params() == pytest.approx(6.8e9, rel=0.02)


def test_openai_init():
    torch.manual_seed(0)
    cfg = IGPTConfig.preset("tiny", n_embd=256, n_head=4, n_layer=4, n_classes=10)
    m = IGPT(cfg)
    assert torch.all(m.wtet.weight == 0) and torch.all(m.wclf.weight == 0)
    assert torch.all(m.blocks[0].ln_1.g == 1) and torch.all(m.ln_f.g == 1)
    assert m.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert m.wpe.std().item() == pytest.approx(0.01, rel=0.1)
    assert m.blocks[0].attn.qkv.weight.std().item() == pytest.approx(1 / 16, rel=0.05)
    assert m.blocks[0].attn.proj.weight.std().item() == pytest.approx(1 / 32, rel=0.05)
    assert m.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(mod.bias is None for mod in m.modules() if isinstance(mod, torch.nn.Linear))
    # Zero head: the untrained loss is exactly log k.
    assert m.loss(tokens()).item() == pytest.approx(np.log(16), abs=1e-6)


def test_norm_is_openai_rmsnorm():
    m = make()
    x = torch.randn(2, 5, 32)
    ln = m.blocks[0].ln_1
    expect = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * ln.g
    torch.testing.assert_close(ln(x), expect, rtol=1e-6, atol=1e-6)


def test_ar_is_causal_and_predicts_position_t():
    m, x = make(), tokens()
    j = 20
    y = x.clone()
    y[:, j] = (y[:, j] + 1) % 16
    a, b = m(x), m(y)
    # Output t predicts x_t from x_<t: positions <= j cannot see the change, later ones do.
    torch.testing.assert_close(a[:, : j + 1], b[:, : j + 1], rtol=0, atol=1e-6)
    assert (a[:, j + 1 :] - b[:, j + 1 :]).abs().max() > 1e-4
    # The loss scores all n positions with no extra shift.
    ce = F.cross_entropy(a.flatten(0, 1), x.flatten())
    assert m.loss(x).item() == pytest.approx(ce.item(), rel=1e-6)


def test_bert_is_bidirectional_and_masks_embeddings():
    m, x = make("bert"), tokens()
    assert m.sos is None
    y = x.clone()
    y[:, 50] = (y[:, 50] + 1) % 16
    # Changing a later token changes an earlier position's output (AR: it does not).
    assert (m(x)[:, :10] - m(y)[:, :10]).abs().max() > 1e-4
    # A masked position's token is invisible everywhere: only its position remains.
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, 50] = True
    torch.testing.assert_close(m(x, mask), m(y, mask), rtol=0, atol=1e-6)


def test_bert_loss_is_per_image_mean_over_masked_positions():
    m, x = make("bert"), tokens(B=4)
    mask = m.sample_mask(4, 64, torch.Generator().manual_seed(0))
    assert 0.05 < mask.float().mean() < 0.3
    logits = m(x, mask)
    per = []
    for i in range(4):
        ce = F.cross_entropy(logits[i][mask[i]], x[i][mask[i]], reduction="sum")
        per.append(ce / mask[i].sum())
    torch.testing.assert_close(m.loss(x, mask), torch.stack(per).mean(), rtol=1e-5, atol=1e-6)
    # An unmasked image contributes nothing (rather than a division by zero).
    mask[0] = False
    assert torch.isfinite(m.loss(x, mask))


def _manual_sites(m, x):
    """Every site, computed by hand with a plain forward pass."""
    h = m.embed(x)
    got = {}
    for i, blk in enumerate(m.blocks):
        got[f"blocks.{i}.resid_pre"] = h
        got[f"blocks.{i}.ln_1"] = blk.ln_1(h)
        a = blk.attn(blk.ln_1(h))
        got[f"blocks.{i}.attn_out"] = a
        h = h + a
        mo = blk.mlp(blk.ln_2(h))
        got[f"blocks.{i}.mlp_out"] = mo
        h = h + mo
    L = len(m.blocks)
    got[f"blocks.{L - 1}.resid_post"] = h
    got["ln_f"] = m.ln_f(h)
    return got


@pytest.mark.parametrize("objective", ["ar", "bert"])
@pytest.mark.parametrize("kind", ["ln_1", "resid_pre", "attn_out", "mlp_out"])
def test_features_match_the_site_definitions(objective, kind):
    m, x = make(objective), tokens()
    with torch.no_grad():
        ref = _manual_sites(m, x)
    L = m.config.n_layer
    layers = list(valid_layers(kind, L))
    feats = m.features(x, site=kind, n_masks=0)
    assert feats.shape == (len(layers), 3, 32) and feats.dtype == torch.float32
    full = m.features(x, layers=[1], site=kind, pool=False, n_masks=0)
    for i, layer in enumerate(layers):
        name = site_name(layer, kind, L)
        assert parse_site(name, L) == (layer, kind)
        torch.testing.assert_close(feats[i], ref[name].mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full[0], ref[site_name(1, kind, L)], rtol=1e-5, atol=1e-6)


def _taps(model, x, mask):
    """Every site a forward pass with gradients shows a tap: ``{(layer, kind): x}``, and the
    gradient of the sum of layer 1's pooled ``ln_1`` output w.r.t. every parameter."""
    seen = {}
    model.zero_grad()
    model.loss(x, mask, tap=lambda layer, kind, h: seen.__setitem__((layer, kind), h))
    seen[(1, "ln_1")].mean(1).sum().backward()
    return seen, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", ["ar", "bert"])
def test_site_taps_agree_on_the_training_and_literal_paths(objective):
    from igpt_eval.model import ops

    m = make(objective).double().train()
    x = tokens()
    mask = m.sample_mask(3, 64, torch.Generator().manual_seed(0)) if objective == "bert" else None
    fast, fast_grads = _taps(m, x, mask)  # autograd on the CPU: the training path
    with ops.literal_ops():
        slow, slow_grads = _taps(m, x, mask)
    L = m.config.n_layer
    kinds = ("resid_pre", "ln_1", "attn_out", "mlp_out")
    want = {(layer, k) for layer in range(L) for k in kinds} | {(L, "resid_pre")}
    assert set(fast) == set(slow) == want
    for key in want:
        torch.testing.assert_close(fast[key], slow[key], rtol=1e-10, atol=1e-12, msg=str(key))
    assert fast_grads.keys() == slow_grads.keys() and "blocks.0.attn.qkv.weight" in fast_grads
    for name, g in fast_grads.items():
        torch.testing.assert_close(g, slow_grads[name], rtol=1e-9, atol=1e-12, msg=name)
    # And what the taps see is what features() reports.
    feats = m.features(x, layers=[0, 1, 2], mask=mask)
    for layer in range(3):
        torch.testing.assert_close(feats[layer], slow[(layer, "ln_1")].mean(1).float())


def test_features_stop_after_the_last_requested_layer():
    m, x = make(), tokens()
    calls = []
    for i, blk in enumerate(m.blocks):
        blk.attn.register_forward_hook(lambda *a, i=i: calls.append(f"attn{i}"))
    m.ln_f.register_forward_hook(lambda *a: calls.append("ln_f"))
    m.wtet.register_forward_hook(lambda *a: calls.append("wtet"))
    m.features(x, layers=[0, 1])
    assert calls == ["attn0"]  # block 1's ln_1 is read; its attention never runs
    calls.clear()
    m.features(x)
    assert calls == ["attn0", "attn1", "attn2", "ln_f"]  # and never the logits


def test_bert_features_average_over_masks():
    m, x = make("bert"), tokens()
    g = torch.Generator().manual_seed(3)
    masks = [m.sample_mask(3, 64, g) for _ in range(4)]
    expect = sum(m.features(x, mask=mk) for mk in masks) / 4
    got = m.features(x, n_masks=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expect)
    unmasked = m.features(x, n_masks=0)
    assert (got - unmasked).abs().max() > 1e-4
    # No generator: a fixed seed, not the global RNG (the same call, the same features).
    torch.manual_seed(1)
    a = m.features(x, n_masks=2)
    torch.manual_seed(2)
    b = m.features(x, n_masks=2)
    assert torch.equal(a, b)
    assert torch.equal(a, m.features(x, n_masks=2, generator=torch.Generator().manual_seed(0)))


def test_bf16_autocast_features_are_close():
    m, x = make(), tokens()
    f32 = m.features(x)
    bf16 = m.features(x, autocast=torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert (bf16 - f32).abs().max() < 0.05 * f32.abs().max()


def test_generate_kv_cache_matches_full_forward():
    m = make()
    out = m.generate(2, temperature=0)
    # Greedy: every sampled id is the argmax of a full (cache-free) forward pass.
    assert torch.equal(m(out).argmax(-1), out)
    x = tokens(B=2)
    comp = m.generate(prefix=x[:, :24], seed=0)
    assert torch.equal(comp[:, :24], x[:, :24])
    assert torch.equal(comp, m.generate(prefix=x[:, :24], seed=0))  # seeded
    assert not torch.equal(comp, m.generate(prefix=x[:, :24], seed=1))
    top1 = m.generate(prefix=x[:, :24], seed=5, top_k=1)
    assert torch.equal(top1, m.generate(prefix=x[:, :24], temperature=0))
    with pytest.raises(IGPTError, match="autoregressive"):
        make("bert").generate(1)


def test_classifier_head():
    m = make(n_classes=5)
    with torch.no_grad():
        m.wclf.weight.normal_()
    x = tokens()
    h = m.embed(x)
    for blk in m.blocks:
        h = blk(h)
    torch.testing.assert_close(m.classify(x), m.ln_f(h).mean(1) @ m.wclf.weight.T)
    with pytest.raises(IGPTError, match="no classifier"):
        make().classify(x)


def test_save_load_roundtrip(tmp_path):
    m, x = make("bert"), tokens()
    save_model(m, tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    m2 = load_model(tmp_path / "ck")
    assert m2.config == m.config
    mask = m.sample_mask(3, 64)
    torch.testing.assert_close(m(x, mask), m2(x, mask), rtol=0, atol=0)


def test_load_errors(tmp_path):
    with pytest.raises(IGPTError, match="no checkpoint folder"):
        load_model(tmp_path / "nope")
    save_model(make(), tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck/config.json").read_text())
    (tmp_path / "ck/config.json").write_text(json.dumps({**cfg, "n_layer": 4}))
    with pytest.raises(IGPTError, match="missing"):
        load_model(tmp_path / "ck")
    (tmp_path / "ck/config.json").write_text(json.dumps({**cfg, "n_embd": 64}))
    with pytest.raises(IGPTError, match="shape"):
        load_model(tmp_path / "ck")
    (tmp_path / "ck/config.json").write_text(json.dumps(cfg))
    (tmp_path / "ck/model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(IGPTError, match="not a readable safetensors"):
        load_model(tmp_path / "ck")
    (tmp_path / "ck/config.json").write_text("{not json")
    with pytest.raises(IGPTError, match="not valid JSON"):
        load_model(tmp_path / "ck")


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 64), "integer"),
        (torch.full((2, 64), 16), "outside the palette"),
        (torch.full((2, 64), -1), "outside the palette"),
        (torch.zeros(2, 65, dtype=torch.long), "longer than"),
        (torch.zeros(64, dtype=torch.long), "shape"),
        (np.zeros((2, 64), dtype=np.float32), "integer"),
    ],
)
def test_bad_tokens(bad, match):
    with pytest.raises(IGPTError, match=match):
        make()(bad)


def test_uint16_arrays_are_accepted():
    m, x = make(), tokens()
    torch.testing.assert_close(m(x.numpy().astype(np.uint16)), m(x))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: IGPTConfig.preset("huge"), "unknown preset"),
        (lambda: IGPTConfig.from_dict({"n_layers": 3}), "unknown config keys"),
        (lambda: IGPTConfig(n_embd="512"), "must be int"),
        (lambda: IGPTConfig(n_embd=True), "must be int"),
        (lambda: IGPTConfig(n_embd=100, n_head=8), "divisible"),
        (lambda: IGPTConfig(objective="mlm"), "objective"),
        (lambda: IGPTConfig(n_layer=0), ">= 1"),
        (lambda: site_name(4, "ln_1", 3), "out of range"),
        (lambda: site_name(3, "attn_out", 3), "out of range"),
        (lambda: make().features(tokens(), site="q"), "unknown site"),
        (lambda: make().features(tokens(), layers=[7]), "out of range"),
    ],
)
def test_bad_config_and_sites(call, match):
    with pytest.raises(IGPTError, match=match):
        call()


def test_flops_per_token_counts_the_matmuls():
    ar = IGPTConfig.preset("mini")  # d 128, 8 layers, 256 positions, 16 colours
    # Per layer: 24 d² (projections and MLP) + 4 T d / 2 (causal attention); head 2 d k.
    assert ar.flops_per_token(head=False) == 8 * (24 * 128**2 + 2 * 256 * 128)
    assert ar.flops_per_token() == ar.flops_per_token(head=False) + 2 * 128 * 16
    assert ar.flops_per_token(training=True) == 3 * ar.flops_per_token()
    bert = IGPTConfig.preset("mini", objective="bert")  # bidirectional: the full T x T
    assert bert.flops_per_token(head=False) == 8 * (24 * 128**2 + 4 * 256 * 128)


def test_a_palette_of_another_size_is_one_clear_error_everywhere(tmp_path):
    from igpt_eval.data.palette import Palette
    from igpt_eval.model.loading import open_model

    cfg = IGPTConfig(vocab_size=8, n_px=4, n_embd=16, n_head=2, n_layer=1)
    wrong = Palette(np.linspace(-1, 1, 6, dtype=np.float32)[:, None])
    with pytest.raises(IGPTError, match="6 colours but the model's vocabulary is 8; do X"):
        cfg.check_palette(wrong, "; do X")
    cfg.check_palette(Palette(np.linspace(-1, 1, 8, dtype=np.float32)[:, None]))
    net = IGPT(cfg)
    with pytest.raises(IGPTError, match="vocabulary is 8"):
        save_model(net, tmp_path / "m", wrong)
    assert not (tmp_path / "m").exists()  # refused before anything is written
    with pytest.raises(IGPTError, match="vocabulary is 8"):
        open_model(net, wrong)
