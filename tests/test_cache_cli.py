"""``igpt-eval extract`` and ``igpt_eval.extract``: checkpoints and datasets in, caches out;
SIGKILL and resume, two gloo processes, one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import igpt_eval
from igpt_eval.cache import ActivationCache
from igpt_eval.cli import main
from igpt_eval.data import TokenCache
from igpt_eval.data.palette import Palette
from igpt_eval.model import IGPT, load_model, save_model
from igpt_eval.model.config import IGPTConfig


@pytest.fixture(autouse=True)
def one_thread():
    # The machine may be busy: two threads fighting over loaded cores are far slower than one.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_checkpoint(path, objective="ar", seed=0, dataset=None):
    torch.manual_seed(seed)
    model = IGPT(IGPTConfig.preset("tiny", objective=objective))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1)
    palette = Palette(np.linspace(-1, 1, 48, dtype=np.float32).reshape(16, 3))
    save_model(model, path, palette=palette)
    if dataset:
        (path / "run.json").write_text(json.dumps({"dataset": dataset, "train_config": {}}))
    return path


@pytest.fixture
def ckpt(tmp_path, tiny_npz):
    return save_checkpoint(tmp_path / "ck", dataset=f"npz:{tiny_npz}")


def random_npz(path, n_test):
    """``n_test`` random 8x8 RGB test images (and 60 train)."""
    rng = np.random.default_rng(1)
    np.savez(
        path,
        images=rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8),
        labels=np.arange(60) % 3,
        test_images=rng.integers(0, 256, (n_test, 8, 8, 3), dtype=np.uint8),
        test_labels=np.arange(n_test) % 3,
    )
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("igpt-eval: error: "), err
    return err[0]


def cli_args(tmp_path, ckpt, *extra, out="acts"):
    return [
        "extract",
        "--model",
        str(ckpt),
        "--out",
        str(tmp_path / out),
        "--token-cache",
        str(tmp_path / "tokens"),
        "--batch-size",
        "8",
        "--no-progress",
        *extra,
    ]


def test_cli_writes_what_the_python_api_reuses(tmp_path, ckpt, tiny_npz, capsys, monkeypatch):
    assert main(cli_args(tmp_path, ckpt, "--dataset", f"npz:{tiny_npz}", "--layers", "0,2-3")) == 0
    assert "layers 0,2,3 @ ln_1, float32, complete" in capsys.readouterr().out
    m = json.loads((tmp_path / "acts/manifest.json").read_text())
    assert m["split"] == "test" and m["model"] == str(ckpt) and m["palette_hash"]
    calls = []
    real = IGPT.features
    monkeypatch.setattr(IGPT, "features", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = igpt_eval.extract(
        ckpt, igpt_eval.DataSource(f"npz:{tiny_npz}", token_cache=tmp_path / "tokens"),
        split="test", out=tmp_path / "acts",
        settings=igpt_eval.ExtractSettings(layers=[0, 2, 3], batch_size=8),
    )  # fmt: skip
    assert calls == [] and cache.complete  # same weights, palette, data: reused as is
    tokens = TokenCache.open(next((tmp_path / "tokens").iterdir())).tokens
    model = load_model(ckpt)
    want = real(model, torch.from_numpy(tokens.astype(np.int64)), [0, 2, 3])
    np.testing.assert_allclose(cache[2], want[1].numpy(), atol=1e-6)
    np.testing.assert_array_equal(cache.labels, np.arange(12) % 3)


def test_cache_root_is_the_user_cache_not_the_working_directory(tmp_path, monkeypatch):
    from platformdirs import user_cache_path

    from igpt_eval.defaults import cache_root

    monkeypatch.setenv("IGPT_EVAL_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"  # read at each call
    monkeypatch.delenv("IGPT_EVAL_CACHE")
    roots = set()
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        monkeypatch.chdir(tmp_path / where)
        roots.add(cache_root())
    assert roots == {user_cache_path("igpt-eval", appauthor=False)}
    assert next(iter(roots)).is_absolute()


def test_commands_run_from_anywhere_share_the_caches(tmp_path, ckpt, tiny_npz, monkeypatch):
    """No cache flag: tokens and activations land in the cache root, and the same command
    run from another directory reuses both instead of building them again."""
    args = ["extract", "--model", str(ckpt), "--dataset", f"npz:{tiny_npz}", "--no-progress"]
    calls = []
    real = IGPT.features
    monkeypatch.setattr(IGPT, "features", lambda *a, **k: calls.append(1) or real(*a, **k))
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        monkeypatch.chdir(tmp_path / where)
        assert main(args) == 0
        if where == "a":
            made, calls[:] = len(calls), []
    assert made > 0 and calls == []  # the second run extracted nothing
    root = tmp_path / "cache"  # the autouse fixture's $IGPT_EVAL_CACHE
    assert len(list((root / "tokens").iterdir())) == 1
    assert len(list((root / "activations").iterdir())) == 1
    assert not any((tmp_path / w / "runs").exists() for w in ("a", "b"))


def test_split_all_and_dataset_from_run_json(tmp_path, ckpt, capsys):
    assert main(cli_args(tmp_path, ckpt, "--split", "all", "--layers", "3")) == 0
    sizes = {s: ActivationCache.open(tmp_path / "acts" / s).manifest.n for s in ("train",
             "val", "test")}  # fmt: skip
    assert sizes == {"train": 54, "val": 6, "test": 12}
    assert main(["info", str(tmp_path / "acts/val")]) == 0
    out = capsys.readouterr().out
    assert "status      complete" in out and "2 files match their sha256" in out


def test_info_catches_tampering_and_reports_progress(tmp_path, ckpt, capsys):
    assert main(cli_args(tmp_path, ckpt)) == 0
    f = tmp_path / "acts/blocks.1.ln_1.npy"
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["info", str(tmp_path / "acts")]) == 2
    assert "blocks.1.ln_1.npy does not match its checksum" in one_error_line(capsys)
    m = json.loads((tmp_path / "acts/manifest.json").read_text())
    m.update(complete=False, rows_completed=8)
    (tmp_path / "acts/manifest.json").write_text(json.dumps(m))
    assert main(["info", str(tmp_path / "acts")]) == 0
    assert "incomplete: 8/12 rows" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, ckpt, tiny_npz, capsys):
    def fails(args, match):
        assert main(args) == 2, args
        line = one_error_line(capsys)
        assert match in line, line
        return line

    fails(cli_args(tmp_path, tmp_path / "nope"), "no model at")
    broken = save_checkpoint(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    fails(cli_args(tmp_path, broken, "--dataset", f"npz:{tiny_npz}"), "not a readable")
    nopal = save_checkpoint(tmp_path / "nopal")
    (nopal / "palette.npy").unlink()
    fails(cli_args(tmp_path, nopal, "--dataset", f"npz:{tiny_npz}"), "no palette.npy")
    fails(cli_args(tmp_path, ckpt, "--site", "attn"), "unknown site")
    fails(cli_args(tmp_path, ckpt, "--layers", "0,9"), "out of range")
    fails(cli_args(tmp_path, ckpt, "--layers", "x"), "--layers takes")
    fails(cli_args(tmp_path, ckpt, "--full-sequence-layer", "4"), "out of range")
    fails(cli_args(tmp_path, save_checkpoint(tmp_path / "norun")), "no run.json")
    # (An empty split cannot come out of the registry; the cache refuses one: test_cache.py.)
    # A cache made by another model is refused, and left as it was.
    assert main(cli_args(tmp_path, ckpt)) == 0
    before = (tmp_path / "acts/manifest.json").read_text()
    other = save_checkpoint(tmp_path / "other", seed=1, dataset=f"npz:{tiny_npz}")
    line = fails(cli_args(tmp_path, other), "another model weights")
    assert "--rebuild-cache" in line and (tmp_path / "acts/manifest.json").read_text() == before
    assert main(cli_args(tmp_path, other, "--rebuild-cache")) == 0


def run_cli(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "igpt_eval.cli", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, **kw,
    )  # fmt: skip


def rows_done(path) -> int:
    try:
        return json.loads((path / "manifest.json").read_text())["rows_completed"]
    except (OSError, ValueError, KeyError):
        return 0


def assert_same_cache(a, b, exact=True):
    a, b = ActivationCache.open(a, verify=True), ActivationCache.open(b, verify=True)
    assert a.layers == b.layers
    for (_, x), (_, y) in zip(a, b, strict=True):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_sigkill_then_rerun_is_bit_identical(tmp_path):
    # 75 batches of 16 (each flushed and committed): long enough to kill half-way.
    npz = random_npz(tmp_path / "big.npz", 1200)
    ck = save_checkpoint(tmp_path / "ck", objective="bert")
    common = cli_args(
        tmp_path, ck, "--dataset", f"npz:{npz}", "--bert-masks", "2", "--layers", "1,3"
    )
    common[common.index("--batch-size") + 1] = "16"
    ref = run_cli([*common, "--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=300) == 0, ref.stderr.read()

    proc = run_cli([*common, "--out", str(tmp_path / "run")])
    deadline = time.time() + 300
    while rows_done(tmp_path / "run") < 160 and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = rows_done(tmp_path / "run")
    assert 0 < killed_at < 1200, "the run finished before the kill"
    part = ActivationCache.open(tmp_path / "run")
    assert not part.complete and part[1].shape == (killed_at, 32)

    again = run_cli([*common, "--out", str(tmp_path / "run")])
    assert again.wait(timeout=300) == 0, again.stderr.read()
    assert_same_cache(tmp_path / "ref", tmp_path / "run")


def test_two_gloo_processes_match_one(tmp_path):
    # BERT with two masks: each rank must draw the same per-row masks a single process does.
    npz = random_npz(tmp_path / "big.npz", 300)
    ck = save_checkpoint(tmp_path / "ck", objective="bert")
    common = cli_args(tmp_path, ck, "--dataset", f"npz:{npz}", "--bert-masks", "2")
    common[common.index("--batch-size") + 1] = "40"  # 8 batches, the last one partial
    common += ["--full-sequence-layer", "2"]
    one = run_cli([*common, "--out", str(tmp_path / "one")])
    assert one.wait(timeout=300) == 0, one.stderr.read()
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "igpt_eval.cli", *common, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert_same_cache(tmp_path / "one", tmp_path / "two", exact=False)
    a = ActivationCache.open(tmp_path / "one").full_sequence
    b = ActivationCache.open(tmp_path / "two").full_sequence
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)
    assert json.loads((tmp_path / "two/manifest.json").read_text())["world_size"] == 2
