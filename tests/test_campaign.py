"""The pretraining campaign (``igpt-eval campaign``): the smoke size end to end on files in
Fashion-MNIST's real format, the dry-run plan, the budget arithmetic, bad input, and the
bf16 weights it ships when float32 would not fit one file."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch

from igpt_eval.cli.main import main
from igpt_eval.errors import IGPTError
from igpt_eval.model.checkpoint import load_model, save_model
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.igpt import IGPT
from igpt_eval.studies.campaign_plan import MAX_FILE_BYTES, make_plan, weight_dtype
from igpt_eval.studies.settings import SMOKE_CAMPAIGN, CampaignSettings
from tests.test_data import write_fashion

MODEL_FILES = {"model.safetensors", "config.json", "palette.npy", "run.json", "train_log.csv"}


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion")
    write_fashion(folder, n_train=700, n_test=300)
    return folder


@pytest.fixture(scope="module")
def smoke(fashion, tmp_path_factory):
    """One smoke campaign, shared by the tests that read what it wrote."""
    root = tmp_path_factory.mktemp("campaign")
    out = root / "out"
    rc = main(["campaign", "--smoke", "--data-dir", str(fashion), "--out", str(out),
               "--no-progress"])  # fmt: skip
    assert rc == 0
    return out


def test_smoke_campaign_writes_eight_small_files(smoke):
    files = sorted(p.relative_to(smoke).as_posix() for p in smoke.rglob("*") if p.is_file())
    top = ["results.csv", "track.csv", "predictions.npz"]
    expected = sorted([f"fmnist-ar-gpu/{f}" for f in MODEL_FILES] + top)
    assert files == expected  # what a GPU call can bring back: at most 8 files
    assert all((smoke / f).stat().st_size <= MAX_FILE_BYTES for f in files)
    assert not (smoke / "fmnist-ar-gpu" / "resume").exists()  # checkpoints stay in scratch


def test_smoke_campaign_records_every_stage(smoke):
    run = json.loads((smoke / "fmnist-ar-gpu" / "run.json").read_text())
    c = run["campaign"]
    assert c["status"] == "done"
    assert set(c["stages"]) == {"data", "pretraining", "final probes", "snapshots", "fine-tuning"}
    plan = c["plan"]
    # The step count the pilot fixed is the one trained, and it fits the budget.
    assert run["train_config"]["steps"] == plan["steps"] == c["training"]["step"]
    assert plan["measured"] is True
    assert plan["steps"] * plan["step_seconds"] <= SMOKE_CAMPAIGN.budget_min * 60
    assert run["dataset"] == "fashion-mnist" and run["model_config"]["n_layer"] == 3


def test_smoke_campaign_probes_with_every_control_and_contrast(smoke):
    df = pd.read_csv(smoke / "results.csv")
    label = df.model.iloc[0]
    assert label.startswith("fmnist-ar-gpu-")
    lbfgs = df[(df.model == label) & (df.probe == "lbfgs") & (df.metric == "accuracy")]
    assert sorted(lbfgs.layer.unique()) == [0, 1, 2, 3]
    assert {"pixels", "pixels_native"} <= set(df.probe)
    assert (df.model == f"{label} (random weights)").any()
    contrasts = set(df.contrast.dropna())
    assert {"best_vs_last", "best_vs_pixels", "best_vs_pixels_native", "best_vs_random",
            "concat_vs_best"} <= contrasts  # fmt: skip
    ft = df[(df.probe == "finetune") & (df.split == "test") & (df.metric == "accuracy")]
    assert len(ft) == 1 and ft.model.iloc[0] == label
    best = df[(df.contrast == "best_vs_last")].layer.iloc[0]
    assert ft.layer.iloc[0] == best  # the head sits on the layer chosen on validation


def test_smoke_campaign_tracks_every_snapshot(smoke):
    run = json.loads((smoke / "fmnist-ar-gpu" / "run.json").read_text())
    track = pd.read_csv(smoke / "track.csv")
    assert sorted(track.step.unique()) == run["campaign"]["plan"]["snapshot_steps"]
    assert 0 in set(track.step)  # the untrained network: the random-weights control
    assert set(track.run) == {"fmnist-ar-gpu"}
    # The run's log says what each snapshot scored, as the GPU call's only transcript.
    lines = [x for x in run["campaign"]["log"] if x.startswith("track step ")]
    assert [int(x.split()[2]) for x in lines] == sorted(track.step.unique())
    assert all("best layer (val)" in x for x in lines)


def test_smoke_campaign_ships_the_trained_weights(smoke):
    shipped = load_model(smoke / "fmnist-ar-gpu")
    trained = load_model(smoke.with_name("out.work") / "run")
    for k, v in trained.state_dict().items():
        assert torch.equal(shipped.state_dict()[k], v), k


def test_smoke_finetune_stops_at_its_wall_clock_cap(smoke):
    work = smoke.with_name("out.work") / "finetune"
    cfg = json.loads((work / "finetune.json").read_text())["finetune_config"]
    with open(work / "finetune_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["step"]) < cfg["steps"] or float(rows[-1]["seconds"]) >= cfg["max_seconds"]
    stopped_by_clock = float(rows[-1]["seconds"]) >= cfg["max_seconds"]
    assert stopped_by_clock or len(rows) >= 4  # else early stopping (patience 4) ended it


def test_dry_run_prints_the_plan_and_writes_nothing(fashion, tmp_path, capsys):
    out = tmp_path / "plan"
    rc = main(["campaign", "--dry-run", "--device", "cuda", "--data-dir", str(fashion),
               "--out", str(out), "--budget-min", "5"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "16 layers x d 192" in text and "28x28 px" in text
    assert "steps:" in text and "training FLOPs" in text and "expected minutes" in text
    assert not out.exists() and not out.with_name("plan.work").exists()


def test_plan_fits_the_budget_and_refuses_one_too_short():
    s = CampaignSettings(budget_min=2.0)
    sizes = (54_000, 6_000, 10_000)
    plan = make_plan(s, sizes, "cuda", step_seconds=0.05, val_seconds=0.5, spent_seconds=10)
    used = 10 + plan.steps * 0.05 + (s.evals + s.snapshots + 2) * 0.5
    assert used <= s.budget_min * 60 and plan.steps > 1000
    assert plan.snapshot_steps[0] == 0 and plan.snapshot_steps[-1] == plan.steps
    assert plan.tokens == plan.steps * 128 * 784
    assert plan.warmup == 54_000 // 128  # one epoch, the paper's
    with pytest.raises(IGPTError, match="budget"):
        make_plan(s, sizes, "cuda", step_seconds=20.0)


@pytest.mark.parametrize("budget", ["0", "-1", "abc", "nan", "inf"])
def test_a_budget_that_is_no_positive_number_is_one_line(budget, tmp_path, capsys):
    rc = main(["campaign", "--budget-min", budget, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "positive number" in err
    assert not (tmp_path / "o").exists()


def test_an_existing_out_is_refused_and_left_alone(fashion, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "results.csv").write_text("precious")
    rc = main(["campaign", "--smoke", "--data-dir", str(fashion), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "--overwrite" in err
    assert (out / "results.csv").read_text() == "precious"
    assert not out.with_name("o.work").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_without_a_gpu_is_one_line(tmp_path, capsys):
    rc = main(["campaign", "--device", "cuda", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and "cuda" in err
    assert not (tmp_path / "o").exists()


def test_bf16_weights_fit_a_file_and_load_as_float32(tmp_path):
    cfg = IGPTConfig(vocab_size=8, n_px=4, n_embd=16, n_head=2, n_layer=2)
    torch.manual_seed(0)
    net = IGPT(cfg)
    save_model(net, tmp_path / "f32")
    save_model(net, tmp_path / "bf16", dtype=torch.bfloat16)
    small = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert small < 0.6 * (tmp_path / "f32" / "model.safetensors").stat().st_size
    back = load_model(tmp_path / "bf16")
    for k, v in net.state_dict().items():
        w = back.state_dict()[k]
        assert w.dtype == torch.float32
        assert torch.equal(w, v.to(torch.bfloat16).float()), k
    assert weight_dtype(1_000_000) == torch.float32  # 4 MB: fits as is
    assert weight_dtype(7_250_000) == torch.bfloat16  # the campaign's model: 29 MB in float32
    assert np.isclose(torch.bfloat16.itemsize * 7_250_000 / 2**20, 13.83, atol=0.01)


def test_report_draws_the_campaign_from_its_files(smoke, tmp_path):
    out = tmp_path / "report"
    assert main(["report", "--campaign", str(smoke), "--out", str(out)]) == 0
    md = (out / "README.md").read_text()
    assert md.startswith("# Campaign: fmnist-ar-gpu") and "status **done**" in md
    assert "− raw pixels at native resolution" in md and "− random weights" in md
    assert "Fine-tuned (head on layer" in md and "Training dynamics" in md
    for stem in ("depth_curve", "track_heatmap-fmnist-ar-gpu", "track_loss_vs_probe"):
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["report", "--campaign", str(tmp_path), "--out", str(tmp_path / "r2")]) == 2


def test_bad_settings_fail_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "o"
    bad = tmp_path / "bad.json"
    for text, words in [('{"n_layer": "x"}', "n_layer"), ('{"depth": 3}', "no campaign setting"),
                        ("[1, 2]", "JSON object")]:  # fmt: skip
        bad.write_text(text)
        rc = main(["campaign", "--settings", str(bad), "--smoke", "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and words in err, err
    rc = main(["campaign", "--settings", str(tmp_path / "none.json"), "--out", str(out)])
    assert rc == 2 and "no campaign settings file" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("o.work").exists()


def test_finetune_minutes_may_be_zero_but_not_negative(fashion, tmp_path, capsys):
    out = tmp_path / "plan"
    args = ["campaign", "--dry-run", "--data-dir", str(fashion), "--out", str(out)]
    assert main([*args, "--device", "cuda", "--finetune-min", "0.00"]) == 0
    assert "fine-tuning 0.0" in capsys.readouterr().out
    assert main([*args, "--finetune-min", "-1"]) == 2
    assert "minutes >= 0" in capsys.readouterr().err
