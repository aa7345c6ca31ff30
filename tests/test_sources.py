"""Models by name: HF ImageGPT folders (safetensors or a pickled .bin), ``hf:OWNER/NAME``
from an offline Hub cache, and the paper's protocol on CIFAR-10 at 32 x 32 through them.

One tiny random ``ImageGPTForCausalImageModeling`` (32 x 32, 16 RGB colours, 2 layers) is
saved three ways; all three give identical features, equal to those of its ``convert``ed
igpt-eval checkpoint. A hostile pickle never runs.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from igpt_eval import IGPTError
from igpt_eval.cache.extraction import extract
from igpt_eval.cli.main import main
from igpt_eval.data import DataSource
from igpt_eval.model.hf import read_bin
from igpt_eval.model.sources import HF_FOLDER, HUB, resolve_model
from tests.test_data import _cifar_rows, _py2_style_pickle

transformers = pytest.importorskip("transformers")

K, N_PX, D, L = 16, 32, 32, 2
REPO, COMMIT = "tester/tiny-igpt", "0123456789abcdef0123456789abcdef01234567"


def _clusters() -> np.ndarray:
    """16 RGB colours in [-1, 1]: the 8 corners of the cube and 8 mid-tones."""
    corners = np.array([[r, g, b] for r in (-1, 1) for g in (-1, 1) for b in (-1, 1)], float)
    return np.concatenate([corners, corners * 0.4]).astype(np.float32)


@pytest.fixture(scope="module")
def hf_sources(tmp_path_factory):
    """The same random HF model as a safetensors folder, a pickled-.bin folder and a Hub
    cache (``hub`` under an ``HF_HOME``) holding the .bin, as the Hub's main branches do."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    cfg = transformers.ImageGPTConfig(
        vocab_size=K + 1, n_positions=N_PX * N_PX, n_embd=D, n_layer=L, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = transformers.ImageGPTForCausalImageModeling(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif "ln" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(std=0.1)
    pre = {"image_processor_type": "ImageGPTImageProcessor", "clusters": _clusters().tolist()}
    st = root / "safetensors"
    model.save_pretrained(st)
    (st / "preprocessor_config.json").write_text(json.dumps(pre))
    binf = root / "bin"
    binf.mkdir()
    shutil.copy(st / "config.json", binf / "config.json")
    shutil.copy(st / "preprocessor_config.json", binf / "preprocessor_config.json")
    torch.save(model.state_dict(), binf / "pytorch_model.bin")
    hub = root / "hf_home" / "hub" / f"models--{REPO.replace('/', '--')}"
    snap = hub / "snapshots" / COMMIT
    shutil.copytree(binf, snap)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text(COMMIT)
    return {"safetensors": st, "bin": binf, "hf_home": root / "hf_home"}


@pytest.fixture
def offline_hub(hf_sources, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(hf_sources["hf_home"]))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return f"hf:{REPO}"


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A CIFAR-10 folder in the real python-pickle batch format: 5 x 30 training images and
    60 test images, 32 x 32 RGB, each class a colour (so a probe has something to find)."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(7)
    tints = rng.integers(30, 225, (10, 3))

    def images(n):
        y = np.arange(n) % 10
        x = tints[y][:, None, None, :] + rng.integers(-25, 25, (n, 32, 32, 3))
        return np.clip(x, 0, 255).astype(np.uint8), [int(v) for v in y]

    for i in range(1, 6):
        x, y = images(30)
        batch = {b"labels": y, b"data": _cifar_rows(x), b"batch_label": b"train"}
        (folder / f"data_batch_{i}").write_bytes(_py2_style_pickle(batch))
    x, y = images(60)
    (folder / "test_batch").write_bytes(_py2_style_pickle({b"labels": y, b"data": _cifar_rows(x)}))
    return root


def _features(model, cifar, tmp_path, name):
    cache = extract(model, DataSource("cifar10", cifar, token_cache=tmp_path / "tokens"), "test",
                    tmp_path / name)  # fmt: skip
    return np.stack([np.asarray(cache[x]) for x in cache.layers]), cache.manifest


def test_three_sources_and_convert_give_identical_features(
    hf_sources, offline_hub, cifar, tmp_path, capsys
):
    kinds = {resolve_model(hf_sources["safetensors"]).kind, resolve_model(offline_hub).kind}
    assert kinds == {HF_FOLDER, HUB}
    feats = {}
    for name, model in (("st", hf_sources["safetensors"]), ("bin", hf_sources["bin"]),
                        ("hub", offline_hub)):  # fmt: skip
        feats[name], manifest = _features(model, cifar, tmp_path, name)
    assert feats["st"].shape == (L + 1, 60, D)
    assert np.array_equal(feats["st"], feats["bin"]) and np.array_equal(feats["st"], feats["hub"])
    # The cache records where the weights came from.
    assert manifest.hub["repo"] == REPO and manifest.hub["commit"] == COMMIT
    assert manifest.weights_hash and manifest.model == offline_hub
    # convert takes the same sources; its checkpoint gives the same features.
    assert main(["convert", "--from-hf", offline_hub, "--out", str(tmp_path / "ours")]) == 0
    assert "16 colours" in capsys.readouterr().out
    conv, _ = _features(tmp_path / "ours", cifar, tmp_path, "conv")
    np.testing.assert_allclose(conv, feats["st"], rtol=0, atol=1e-6)


def test_probe_all_layers_on_cifar10_from_the_hub(offline_hub, cifar, tmp_path, capsys):
    out = tmp_path / "probe"
    argv = ["probe", "--all-layers", "--model", offline_hub, "--dataset", "cifar10",
            "--data-dir", str(cifar), "--out", str(out), "--cache", str(tmp_path / "acts"),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "tiny-igpt" in printed and "best (layer" in printed
    import pandas as pd

    df = pd.read_parquet(out / "results.parquet")
    test = df[(df.split == "test") & (df.metric == "accuracy") & (df.probe == "lbfgs")]
    assert sorted(test.layer) == list(range(L + 1))  # every site, 32 x 32 input
    assert test.value.max() > 0.5  # ten colours: far above chance (0.1)
    assert set(df.model) >= {resolve_model(offline_hub).label, "pixels"}  # tiny-igpt-<hash>
    assert (df.metric == "accuracy_diff").any()  # the paired contrasts
    assert (out / "depth_curve.png").is_file()
    m = json.loads((tmp_path / "acts" / "test" / "manifest.json").read_text())
    assert m["model_config"]["n_px"] == 32 and m["model_config"]["vocab_size"] == K


# ------------------------------------------------------------------------- pickles
class _Hostile:
    """Unpickling this runs ``os.system``: the attack a pickled checkpoint can carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_hostile_pickle_is_refused_and_never_runs(hf_sources, tmp_path, capsys, zip_format):
    folder = tmp_path / "evil"
    shutil.copytree(hf_sources["bin"], folder)
    marker = tmp_path / "pwned"
    payload = {"transformer.wte.weight": torch.zeros(3), "x": _Hostile(marker)}
    if zip_format:
        torch.save(payload, folder / "pytorch_model.bin")
    else:
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(payload))
    assert main(["probe", "--model", str(folder), "--dataset", "cifar10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and "weights_only=False" not in err
    assert not marker.exists()


def test_a_bin_must_be_a_flat_mapping_of_tensors(tmp_path):
    cases = {
        "list": [torch.zeros(2)],
        "int": {"a": torch.zeros(2), "b": 3},
        "nested": {"a": {"b": torch.zeros(2)}},
    }
    for name, obj in cases.items():
        f = tmp_path / f"{name}.bin"
        torch.save(obj, f)
        with pytest.raises(IGPTError, match="not a mapping of names to tensors"):
            read_bin(f)
    torch.save({"a": torch.ones(2)}, tmp_path / "ok.bin")
    assert torch.equal(read_bin(tmp_path / "ok.bin")["a"], torch.ones(2))


# ------------------------------------------------------------------------- bad input
def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_hub_names_offline_say_how_to_fetch(offline_hub, tmp_path, capsys):
    out = tmp_path / "p"
    for spec, want in (
        ("hf:nobody/nothing", "hf download nobody/nothing"),
        (f"{offline_hub}@v2", f"hf download {REPO} --revision v2"),
    ):
        assert main(["probe", "--model", spec, "--dataset", "cifar10", "--out", str(out)]) == 2
        line = _one_line(capsys)
        assert "not in the Hugging Face cache" in line and "HF_HUB_OFFLINE" in line, line
        assert want in line
        assert not out.exists()
    for spec in ("hf:nobody", "hf:a/b/c", "hf:a/b@"):
        assert main(["probe", "--model", spec, "--dataset", "cifar10"]) == 2
        assert "hf:OWNER/NAME" in _one_line(capsys)


def test_a_folder_that_is_not_imagegpt(tmp_path, capsys):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["probe", "--model", str(gpt2), "--dataset", "cifar10"]) == 2
    assert "'gpt2' model, not ImageGPT" in _one_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", "--from-hf", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in _one_line(capsys)


def test_grey_images_into_an_rgb_palette_are_announced(hf_sources, tmp_path, caplog):
    """A warning (shown on stderr by Python's last-resort handler outside the tests)."""
    grey = tmp_path / "grey.npz"
    rng = np.random.default_rng(0)
    n = 40
    np.savez(grey, images=rng.integers(0, 255, (n, 32, 32, 1), dtype=np.uint8),
             labels=np.arange(n) % 2)  # fmt: skip
    cache = extract(hf_sources["safetensors"],
                    DataSource(f"npz:{grey}", token_cache=tmp_path / "tokens"), "test",
                    tmp_path / "acts")  # fmt: skip
    assert cache.manifest.n > 0
    assert "read as RGB (R = G = B)" in caplog.text


def test_colour_images_into_a_grey_palette_are_refused(tmp_path, capsys):
    from igpt_eval.data import Palette
    from igpt_eval.model import IGPT, IGPTConfig, save_model

    grey_model = tmp_path / "m"
    cfg = IGPTConfig.preset("tiny", n_px=8)
    save_model(IGPT.initialised(cfg), grey_model, palette=Palette(np.linspace(-1, 1, 16)[:, None]))
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.zeros((20, 8, 8, 3), np.uint8), labels=np.arange(20) % 2)
    argv = ["extract", "--model", str(grey_model), "--dataset", f"npz:{rgb}",
            "--out", str(tmp_path / "acts")]  # fmt: skip
    assert main(argv) == 2
    assert "a colour dataset needs an RGB palette" in _one_line(capsys)
    assert not (tmp_path / "acts").exists()


def test_too_little_disk_is_refused_before_anything_is_written(
    hf_sources, cifar, tmp_path, capsys, monkeypatch
):
    import igpt_eval.cache.writer as writer

    free = shutil.disk_usage(tmp_path)._replace(free=1000)
    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: free)
    acts = tmp_path / "acts"
    argv = ["extract", "--model", str(hf_sources["safetensors"]), "--dataset", "cifar10",
            "--data-dir", str(cifar), "--out", str(acts), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    line = _one_line(capsys)
    assert "needs 60 images x 3 sites x 32 float32" in line and "--cache-dtype float16" in line
    # Nothing but the writers' lock file: no manifest, no allocated arrays.
    assert [f.name for f in acts.iterdir() if not f.name.startswith(".")] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    assert main(["probe", "--device", "cuda", "--out", str(tmp_path / "p")]) == 2
    line = _one_line(capsys)
    assert "--device cuda" in line and "--device cpu" in line
    assert not (tmp_path / "p").exists()
    assert main(["extract", "--model", "x", "--device", "tpu"]) == 2
    assert "unknown device" in _one_line(capsys) or "not supported" in capsys.readouterr().err


def test_layer_groups_give_the_same_results(tiny_pair, tmp_path, one_torch_thread):
    """A feature budget of one layer (iGPT-L's case, scaled down) probes layer by layer and
    gives every number the all-at-once probe gives. (One thread: with several, a matmul's
    rounding depends on its shape, so any change of batch moves the last bits.)"""
    from igpt_eval.data.source import DataSource
    from igpt_eval.studies.probe import probe_model
    from igpt_eval.studies.settings import ProbeSettings

    _, ar, _, npz = tiny_pair
    data = DataSource(f"npz:{npz}", token_cache=tmp_path / "tok")
    s = ProbeSettings(train_size=None, val_size=None, test_size=None, pixels=False)
    whole = probe_model(ar, data, s, cache_dir=tmp_path / "acts").results
    grouped = probe_model(ar, data, s.replace(max_feature_bytes=1), cache_dir=tmp_path / "acts")
    grouped = grouped.results
    cols = ["split", "layer", "metric", "C", "value", "n_iter", "converged"]
    a, b = (d[cols].sort_values(cols[:4]).reset_index(drop=True) for d in (whole, grouped))
    assert len(a) > 0
    assert a.equals(b)


@pytest.mark.parametrize("name", ["stl10", "cifar100"])
def test_stl10_and_cifar100_at_the_models_resolution(hf_sources, tmp_path, name):
    from tests.test_data import write_stl10

    root = tmp_path / "data"
    if name == "stl10":
        write_stl10(root, n_train=4, n_test=3)  # 96 x 96 on disk
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(1)
        for part, n in (("train", 8), ("test", 3)):
            x = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
            d = {b"fine_labels": [int(v) for v in np.arange(n) % 4], b"data": _cifar_rows(x)}
            (folder / part).write_bytes(_py2_style_pickle(d))
    cache = extract(hf_sources["safetensors"], DataSource(name, root, token_cache=tmp_path / "tok"),
                    "test", tmp_path / "acts")  # fmt: skip
    assert cache.manifest.n == 3 and cache.manifest.seq_len == N_PX * N_PX
    assert np.asarray(cache[L]).shape == (3, D) and np.isfinite(np.asarray(cache[L])).all()
