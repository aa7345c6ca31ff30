"""Weight compatibility with Hugging Face ImageGPT: logits, hidden states, round trips."""

import json

import numpy as np
import pytest
import torch

from igpt_eval import IGPTError
from igpt_eval.model import IGPT, to_hf
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.hf import from_hf, hf_state_dict

transformers = pytest.importorskip("transformers")

K, N_PX, D, L, H = 16, 8, 32, 3, 4


def hf_model(biases: bool, cls=None, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.ImageGPTConfig(
        vocab_size=K + 1,
        n_positions=N_PX * N_PX,
        n_embd=D,
        n_layer=L,
        n_head=H,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **kw,
    )
    model = (cls or transformers.ImageGPTForCausalImageModeling)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1 if biases else torch.zeros_like(p))
            elif "ln" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(std=0.1)
    return model


def toks(B=3, seed=1):
    return torch.randint(0, K, (B, N_PX * N_PX), generator=torch.Generator().manual_seed(seed))


def hf_inputs(x):
    """HF ImageGPT's input: the SOS id k prepended, the last pixel dropped."""
    return torch.cat([torch.full((x.shape[0], 1), K), x[:, :-1]], 1)


@pytest.mark.parametrize("biases", [False, True])
def test_logits_and_hidden_states_match_hf(biases):
    ref = hf_model(biases)
    ours = from_hf(ref)
    assert ours.config.bias == biases and ours.config.vocab_size == K
    x = toks()
    with torch.no_grad():
        out = ref(hf_inputs(x), output_hidden_states=True)
    torch.testing.assert_close(ours(x), out.logits, rtol=0, atol=1e-5)
    # Our residual stream entering block l is HF's hidden_states[l]; the last is ln_f's output.
    resid = ours.features(x, layers=range(L), site="resid_pre", pool=False)
    for layer in range(L):
        torch.testing.assert_close(resid[layer], out.hidden_states[layer], rtol=0, atol=1e-5)
    final = ours.features(x, layers=[L], pool=False)[0]
    torch.testing.assert_close(final, out.hidden_states[L], rtol=0, atol=1e-5)


def test_export_import_export_roundtrips_exactly(tmp_path):
    torch.manual_seed(0)
    ours = IGPT(IGPTConfig.preset("tiny"))
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(std=0.1)
    to_hf(ours, tmp_path / "hf")
    # HF itself loads the export with every weight accounted for.
    ref, info = transformers.ImageGPTForCausalImageModeling.from_pretrained(
        tmp_path / "hf", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = toks()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(hf_inputs(x)).logits, rtol=0, atol=1e-5)
    back = from_hf(tmp_path / "hf")
    assert back.config == ours.config
    first, second = hf_state_dict(ours), hf_state_dict(back)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_classifier_and_base_model_import():
    clf = hf_model(False, transformers.ImageGPTForImageClassification, num_labels=5)
    ours = from_hf(clf)
    assert ours.config.n_classes == 5
    x = toks()
    with torch.no_grad():
        torch.testing.assert_close(ours.classify(x), clf(hf_inputs(x)).logits, atol=1e-5, rtol=0)
    base = hf_model(False, transformers.ImageGPTModel)
    ours = from_hf(base)
    assert torch.all(ours.wtet.weight == 0)  # no head in ImageGPTModel: iGPT's zero init
    with torch.no_grad():
        h = base(hf_inputs(x)).last_hidden_state
    torch.testing.assert_close(ours.features(x, layers=[L], pool=False)[0], h, atol=1e-5, rtol=0)


def test_palette_travels_through_preprocessor_config(tmp_path):
    from igpt_eval.data.palette import Palette

    torch.manual_seed(0)
    ours = IGPT(IGPTConfig.preset("tiny"))
    pal = Palette(torch.rand(K, 3).mul(2).sub(1).numpy())
    to_hf(ours, tmp_path / "hf", palette=pal)
    proc = transformers.ImageGPTImageProcessor.from_pretrained(tmp_path / "hf")
    assert np.allclose(np.asarray(proc.clusters, dtype=np.float32), pal.centers)
    back = from_hf(tmp_path / "hf")
    assert (back.palette.centers == pal.centers).all()


def test_bad_hf_inputs(tmp_path):
    with pytest.raises(IGPTError, match="no Hugging Face checkpoint folder"):
        from_hf(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IGPTError, match="no config.json"):
        from_hf(tmp_path / "empty")
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(IGPTError, match="not an ImageGPT checkpoint"):
        from_hf(gpt2)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "imagegpt"}))
    (pickled / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(IGPTError, match="refused: it is not a plain file of tensors"):
        from_hf(pickled)
    bert = IGPT(IGPTConfig.preset("tiny", objective="bert"))
    with pytest.raises(IGPTError, match="always causal"):
        to_hf(bert, tmp_path / "bert")
    assert not (tmp_path / "bert").exists()  # refused before anything was written
    with pytest.raises(IGPTError, match="folder or an HF ImageGPT model"):
        from_hf(42)
