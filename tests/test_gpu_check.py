"""``benchmarks/gpu_check.py --smoke``: the GPU check's own code path, on the CPU in seconds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ("features", "pretrain", "probe")


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    r = run_check("--smoke", "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text())


def positive(x) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and x > 0


def test_every_part_ran(smoke):
    assert smoke["smoke"] is True and smoke["device"] == "cpu"
    for part in PARTS:
        assert "error" not in smoke[part] and "skipped" not in smoke[part], smoke[part]
        assert positive(smoke[part]["wall_s"])
    assert smoke["wall_s"] >= sum(smoke[p]["wall_s"] for p in PARTS)
    assert smoke["torch"] == torch.__version__ and smoke["python"]


def test_features_agree_with_hf(smoke):
    f = smoke["features"]
    assert positive(f["ours_write_cache_images_per_s"]) and positive(f["hf_images_per_s"])
    assert positive(f["ratio_ours_over_hf"])
    assert f["compute"] == "float32" and f["n_images"] >= 2 * f["batch"]
    for key in ("max_rel_diff_vs_hf", "max_rel_diff_cache_vs_hf", "max_rel_diff_vs_hf_float32"):
        assert 0 <= f[key] < 1e-4, (key, f[key])


def test_pretrain_throughput(smoke):
    p = smoke["pretrain"]
    assert positive(p["tokens_per_s"]) and positive(p["step_s"])
    assert positive(p["matmul_peak_tflops"]) and positive(p["mfu"])
    assert p["train_flops_per_token"] > 0 and all(math.isfinite(x) for x in p["loss_first_last"])
    assert p["peak_gpu_memory_gib"] is None  # the CPU


def test_probe_backends_agree(smoke):
    p = smoke["probe"]
    assert p["subset_layers"] and not p["subset_skipped_for_deadline"]
    assert positive(p["subset_torch_s"]) and positive(p["subset_sklearn_s"])
    assert positive(p["ratio_sklearn_over_torch"]) and positive(p["torch_all_layers_s"])
    gaps = p["test_accuracy_gap_pp"]
    assert sorted(map(int, gaps)) == p["subset_layers"]
    assert all(abs(g) <= 1.0 for g in gaps.values()), gaps
    accs = p["torch_all_layers_test_accuracy"]
    assert len(accs) == p["n_layers"] and max(accs) > 2 / p["n_classes"]  # above chance


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_without_cuda_one_clear_error(tmp_path):
    r = run_check("--out", str(tmp_path / "x.json"))
    assert r.returncode != 0 and not (tmp_path / "x.json").exists()
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "CUDA" in r.stderr
