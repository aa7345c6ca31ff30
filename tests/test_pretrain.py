"""Pretraining: the recipe, exact resumption after SIGKILL, DDP equivalence, the lr sweep."""

import csv
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from igpt_eval.cli import main
from igpt_eval.model import IGPT, load_model
from igpt_eval.model.checkpoint import list_snapshots
from igpt_eval.model.config import IGPTConfig
from igpt_eval.train.pretrain import TrainConfig, Trainer, log_spaced_steps, lr_at
from igpt_eval.train.runs import lr_sweep, pretrain, sweep_lrs
from igpt_eval.train.sampling import batch_rows

CFG = IGPTConfig.preset("tiny")  # 8×8 px, 16 colours, 3 blocks


def striped_tokens(n=96, seed=0):
    """Images whose rows are constant: easy to learn, so the loss must fall."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 16, size=(n, 8, 1))
    return np.repeat(rows, 8, axis=2).reshape(n, 64).astype(np.uint16)


def test_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(steps=100, lr=0.01, warmup_steps=10)
    lrs = [lr_at(s, cfg, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs[54] == pytest.approx(0.005, rel=0.05)  # half-way through the cosine
    # Default warm-up: one epoch, but never more than a third of a short run.
    assert TrainConfig(steps=1000, batch_size=64).warmup(n_train=3200) == 50
    assert TrainConfig(steps=100, batch_size=64).warmup(n_train=3200) == 33
    # The shipped recipe, 3 epochs of 54,000 images at batch 64: the paper's one epoch.
    assert TrainConfig(steps=2529, batch_size=64).warmup(n_train=54_000) == 843
    assert TrainConfig(steps=2, warmup_steps=7).warmup(n_train=54_000) == 7


def test_snapshot_steps_are_log_spaced_and_end_at_the_last_step():
    steps = log_spaced_steps(8, 10_000)
    assert steps[0] == 100 and steps[-1] == 10_000 and len(steps) == 9
    ratios = np.diff(np.log(steps[:-1]))
    assert np.allclose(ratios, ratios[0], atol=0.01)  # evenly spaced in log(step)
    assert log_spaced_steps(5, 3) == (1, 2, 3)  # a short run: fewer, no repeats
    assert log_spaced_steps(1, 1) == (1,)
    with pytest.raises(Exception, match="positive integer"):
        log_spaced_steps(0, 100)


def test_paper_lr_sweep_sequence():
    assert sweep_lrs(5) == [0.01, 0.003, 0.001, 0.0003, 0.0001]


def test_batches_are_seeded_epoch_permutations():
    rows = [batch_rows(s, 50, 10, seed=3) for s in range(5)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(50))  # one epoch, no repeats
    assert np.array_equal(batch_rows(2, 50, 10, 3), rows[2])  # a pure function of the step
    assert not np.array_equal(batch_rows(5, 50, 10, 3), rows[0])  # next epoch reshuffled
    assert not np.array_equal(batch_rows(0, 50, 10, 4), rows[0])  # seed matters


@pytest.mark.parametrize("objective", ["ar", "bert"])
def test_training_learns(tmp_path, objective):
    torch.manual_seed(0)
    model = IGPT(IGPTConfig.preset("tiny", objective=objective))
    x = striped_tokens()
    steps = 60 if objective == "ar" else 200  # BERT scores only 15% of positions a step
    cfg = TrainConfig(steps=steps, batch_size=16, lr=3e-3, eval_every=steps, checkpoint_every=steps)
    res = Trainer(model, x, striped_tokens(32, seed=1), cfg, tmp_path).fit()
    # A row-constant image is far more predictable than log(16) = 2.77 nats.
    assert res["val_loss"] < 0.75 * math.log(16)
    with open(tmp_path / "train_log.csv") as f:
        log = list(csv.DictReader(f))
    assert [int(r["step"]) for r in log] == list(range(1, steps + 1))
    assert float(log[-1]["val_loss"]) == pytest.approx(res["val_loss"])
    assert load_model(tmp_path).config.objective == objective  # the folder is a checkpoint


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    x = striped_tokens()
    out = []
    for accum in (1, 4):
        torch.manual_seed(0)
        model = IGPT(CFG)
        cfg = TrainConfig(steps=5, batch_size=16, grad_accum=accum, lr=1e-3, checkpoint_every=99)
        Trainer(model, x, x[:16], cfg, tmp_path / str(accum)).fit()
        out.append(model.state_dict())
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("literal", [False, True])
def test_literal_ops_setting_picks_the_path(tmp_path, monkeypatch, literal):
    from igpt_eval.model.blocks import Block

    calls = []
    real = Block._train_forward
    monkeypatch.setattr(Block, "_train_forward", lambda *a: calls.append(1) or real(*a))
    x = striped_tokens()
    cfg = TrainConfig(steps=2, batch_size=16, checkpoint_every=99, literal_ops=literal)
    Trainer(IGPT(CFG), x, x[:16], cfg, tmp_path).fit()
    assert (len(calls) == 0) == literal  # 2 steps x n_layer blocks on the training path


def _run_cli(args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "igpt_eval.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _log_rows(path) -> int:
    try:
        with open(path) as f:
            return max(0, sum(1 for _ in f) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("objective, kill_after", [("ar", 13), ("bert", 4)])
def test_sigkill_then_resume_is_bit_identical(tmp_path, tiny_npz, objective, kill_after):
    common = [
        "pretrain",
        "--dataset",
        f"npz:{tiny_npz}",
        "--model",
        "tiny",
        "--objective",
        objective,
        "--steps",
        "30",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "5",
        "--eval-every",
        "7",
        "--token-cache",
        str(tmp_path / "cache"),
        "--no-progress",
        "--snapshots",
        "3",
        "--snapshot-steps",
        "0,17",
    ]
    ref = _run_cli([*common, "--out", str(tmp_path / "ref")])
    assert ref.wait(timeout=300) == 0, ref.stderr.read()

    proc = _run_cli([*common, "--out", str(tmp_path / "run")])
    deadline = time.time() + 300
    while _log_rows(tmp_path / "run/train_log.csv") < kill_after and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _log_rows(tmp_path / "run/train_log.csv") < 30, "the run finished before the kill"

    again = _run_cli([*common, "--out", str(tmp_path / "run"), "--resume"])
    assert again.wait(timeout=300) == 0, again.stderr.read()
    a = load_file(tmp_path / "ref/model.safetensors")
    b = load_file(tmp_path / "run/model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the unbroken run"
    with open(tmp_path / "run/train_log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 31))  # the log has each step once, in order
    # The resumed run ends with the same snapshots, bit for bit, as the unbroken one.
    ref_snaps, run_snaps = list_snapshots(tmp_path / "ref"), list_snapshots(tmp_path / "run")
    assert [s for s, _, _ in ref_snaps] == [0, 1, 3, 10, 17, 30]
    assert [s for s, _, _ in run_snaps] == [0, 1, 3, 10, 17, 30]
    assert ref_snaps[0][2]["val_loss"] == pytest.approx(math.log(16), abs=1e-4)  # zero head
    for (_, a_dir, a_info), (_, b_dir, b_info) in zip(ref_snaps, run_snaps, strict=True):
        a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert a_info["val_loss"] == b_info["val_loss"]
        for f in ("palette.npy", "config.json", "run.json"):  # a full checkpoint folder
            assert (b_dir / f).is_file()
    assert not list((tmp_path / "run/snapshots").glob(".tmp*"))
    # The last snapshot is the final model.
    last = load_file(run_snaps[-1][1] / "model.safetensors")
    assert all(torch.equal(last[k], b[k]) for k in b)


def test_crash_while_checkpointing_keeps_the_last_good_one(tmp_path, monkeypatch):
    x = striped_tokens()
    cfg = TrainConfig(steps=12, batch_size=16, checkpoint_every=4, eval_every=99)
    torch.manual_seed(0)
    ref = IGPT(CFG)
    Trainer(ref, x, x[:16], cfg, tmp_path / "ref").fit()

    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 8) dies half-way through
            f.write(b"partial")
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        pretrain(CFG, cfg, x, x[:16], tmp_path / "run")
    monkeypatch.setattr(torch, "save", real_save)
    resume = tmp_path / "run/resume"
    assert (resume / "LATEST").read_text().strip() == "step-4"
    assert [p.name for p in resume.glob("step-*")] == ["step-4"]
    pretrain(CFG, cfg, x, x[:16], tmp_path / "run", resume=True)
    done = load_model(tmp_path / "run")
    for k, v in ref.state_dict().items():
        assert torch.equal(v, done.state_dict()[k])


def test_lr_sweep_stops_when_loss_rises_and_keeps_the_best(tmp_path):
    x = striped_tokens()
    cfg = TrainConfig(steps=8, batch_size=16, eval_every=8, checkpoint_every=8)
    rows = lr_sweep(CFG, cfg, x, x[:32], tmp_path, max_runs=6)
    lrs = [r["lr"] for r in rows]
    assert lrs == sweep_lrs(len(rows))
    losses = [r["val_loss"] for r in rows]
    # It went on while the loss fell, and stopped at the first rise (or ran out).
    assert all(a >= b for a, b in zip(losses[:-1], losses[1:-1], strict=False))
    assert len(rows) == 6 or losses[-1] > losses[-2]
    best = min(rows, key=lambda r: r["val_loss"])
    assert sum(r["best"] for r in rows) == 1 and best["best"]
    with open(tmp_path / "lr_sweep.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    kept = load_file(tmp_path / "model.safetensors")
    theirs = load_file(tmp_path / "sweep" / f"lr-{best['lr']:g}" / "model.safetensors")
    assert all(torch.equal(kept[k], theirs[k]) for k in kept)


def test_ddp_two_gloo_processes_match_one(tmp_path, tiny_npz):
    common = [
        "pretrain",
        "--dataset",
        f"npz:{tiny_npz}",
        "--model",
        "tiny",
        "--steps",
        "6",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "6",
        "--eval-every",
        "6",
        "--token-cache",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    one = _run_cli([*common, "--out", str(tmp_path / "one")])
    assert one.wait(timeout=300) == 0, one.stderr.read()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "igpt_eval.cli",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a = load_file(tmp_path / "one/model.safetensors")
    b = load_file(tmp_path / "two/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert '"world_size": 2' in (tmp_path / "two/run.json").read_text()


# ------------------------------------------------------------------------- bad input (CLI)
def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("igpt-eval: error: "), err
    return err[0]


@pytest.fixture
def run_args(tmp_path, tiny_npz):
    def make(*extra, out="run"):
        return [
            "pretrain",
            "--dataset",
            f"npz:{tiny_npz}",
            "--model",
            "tiny",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--token-cache",
            str(tmp_path / "cache"),
            "--out",  # not --quiet: the tests read what a run says it is doing
            str(tmp_path / out),
            *extra,
        ]

    return make


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--lr", "0"], "learning rate must be a positive"),
        (["--lr=-1e-3"], "learning rate must be a positive"),
        (["--steps", "ten"], "invalid int value"),
        (["--steps", "0"], "steps must be >= 1"),
        (["--batch-size", "4096"], "fewer than one batch"),
        (["--model", "nope"], "neither a preset"),
        (["--snapshots", "0"], "positive integer"),
        (["--snapshots", "two"], "positive integer"),
        (["--snapshot-steps", "1,x"], "comma-separated steps"),
        (["--snapshot-steps", "-1"], "comma-separated steps"),
        (["--snapshot-steps", "5"], "snapshot steps must lie in 0..2"),
    ],
)
def test_bad_settings_are_one_line(run_args, capsys, extra, match, tmp_path):
    assert main(run_args(*extra)) == 2
    assert match in _one_error(capsys)


def test_bad_config_json(run_args, capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"n_embd": "wide", "n_layer": 2}')
    assert main(run_args("--model", str(bad))) == 2
    assert "must be int" in _one_error(capsys)
    bad.write_text('{"n_embd": 32, "depth": 2}')
    assert main(run_args("--model", str(bad))) == 2
    assert "unknown config keys" in _one_error(capsys)


def test_palette_channel_mismatch(run_args, capsys, tmp_path):
    from igpt_eval.data.palette import Palette

    grey = tmp_path / "grey.npy"
    Palette(np.linspace(-1, 1, 16, dtype=np.float32)[:, None]).save(grey)
    assert main(run_args("--palette", str(grey))) == 2  # tiny_npz is RGB
    assert "channels" in _one_error(capsys)


def test_resume_starts_a_new_run_and_finishes_a_finished_one(run_args, capsys, tmp_path):
    # The same command serves the first start and every restart of a requeued job.
    assert main(run_args("--resume")) == 0
    err = capsys.readouterr().err
    assert "starting it" in err
    weights = (tmp_path / "run/model.safetensors").read_bytes()
    assert main(run_args("--resume")) == 0  # finished already: says so, exit 0
    captured = capsys.readouterr()
    assert "already finished" in captured.err and "final val loss" in captured.out
    assert (tmp_path / "run/model.safetensors").read_bytes() == weights
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    assert main(run_args("--resume", out="other")) == 2  # files, but no run: never touched
    assert "no run.json" in _one_error(capsys)
    assert (tmp_path / "other/notes.txt").read_text() == "mine"


def test_run_records_the_warm_up_it_used_so_a_new_default_cannot_change_it(
    run_args, capsys, tmp_path
):
    import json

    # ~54 training images at batch 8: 6 steps an epoch, so the third-of-the-run cap binds.
    assert main(run_args("--steps", "6")) == 0
    run_json = tmp_path / "run/run.json"
    run = json.loads(run_json.read_text())
    assert run["train_config"]["warmup_steps"] == 2  # a number, not null ("the default")
    with open(tmp_path / "run/train_log.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert lrs[1] == pytest.approx(max(lrs)) and lrs[0] < lrs[1]  # the peak at step 2
    # A run folder from before the warm-up was recorded cannot resume under a new default.
    run["train_config"]["warmup_steps"] = None
    run_json.write_text(json.dumps(run))
    capsys.readouterr()
    assert main(run_args("--steps", "6", "--resume")) == 2
    assert "--warmup-steps" in _one_error(capsys)
    assert json.loads(run_json.read_text()) == run  # refused: the folder is as it was
    # Following the advice resumes it (finished here), and the warm-up is recorded from then.
    assert main(run_args("--steps", "6", "--resume", "--warmup-steps", "2")) == 0
    assert "already finished" in capsys.readouterr().err
    assert json.loads(run_json.read_text())["train_config"]["warmup_steps"] == 2


def test_existing_run_is_never_lost(run_args, capsys, tmp_path):
    assert main(run_args()) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert main(run_args()) == 2  # a second fresh run into the same folder
    assert "--resume" in _one_error(capsys)
    assert main(run_args("--resume", "--model", "tiny", "--objective", "bert")) == 2
    assert "differs" in _one_error(capsys)
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert before == after


def test_short_sweep_then_the_full_run_at_the_best_rate(run_args, capsys, tmp_path):
    args = run_args("--lr-sweep", "2", "--sweep-steps", "1", "--steps", "3", out="swept")
    args[args.index("--steps") + 1] = "3"  # the full run's length (run_args sets 2)
    assert main(args) == 0
    out = tmp_path / "swept"
    with open(out / "lr_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["steps"] for r in rows] == ["1"] * len(rows)  # the sweep used 1-step runs
    best = next(float(r["lr"]) for r in rows if r["best"] == "True")
    import json

    run = json.loads((out / "run.json").read_text())
    assert run["train_config"]["lr"] == best and run["train_config"]["steps"] == 3
    with open(out / "train_log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3]
    weights = (out / "model.safetensors").read_bytes()
    # The same command with --resume: the sweep is not repeated, the finished run says so.
    assert main([*args, "--resume"]) == 0
    assert "already finished" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == weights
    assert main(run_args("--sweep-steps", "1", out="x")) == 2
    assert "give --lr-sweep" in _one_error(capsys)


def test_run_record_round_trips_run_json(tmp_path):
    """``run.json`` is a :class:`RunRecord` written and read back; keys it does not know are
    kept; an empty folder reads as an empty record (a model not trained here)."""
    import json

    from igpt_eval.errors import IGPTError
    from igpt_eval.model.record import RunRecord

    d = {"dataset": "fashion-mnist", "split_seed": 2, "train_config": {"seed": 5, "lr": 3e-3},
         "model_config": {"n_layer": 2}, "objective": "ar", "later_key": [1]}  # fmt: skip
    r = RunRecord.from_json(d)
    assert (r.seed, r.data_seed, r.extra) == (5, 2, {"later_key": [1]})
    r.write(tmp_path)
    assert json.loads((tmp_path / "run.json").read_text()) == d
    assert RunRecord.read(tmp_path) == r
    empty = RunRecord.read(tmp_path / "nowhere")
    assert empty == RunRecord() and (empty.seed, empty.data_seed, empty.dataset) == (0, 0, None)
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(IGPTError, match="JSON object"):
        RunRecord.read(tmp_path)


def test_model_identity_reads_the_model_on_its_runs_split():
    """A model is read on the dataset and split seed given, else on its run's; a model not
    trained here needs a dataset named."""
    from igpt_eval.errors import IGPTError
    from igpt_eval.model.record import RunRecord
    from igpt_eval.model.sources import ModelIdentity

    run = RunRecord(dataset="fashion-mnist", split_seed=3, train_config={"seed": 1})
    ident = ModelIdentity("models/x", run=run)
    assert ident.data(None) == ("fashion-mnist", 3)
    assert ident.data("npz:other.npz", 0) == ("npz:other.npz", 0)
    assert ModelIdentity("hf:openai/imagegpt-small").data("cifar10") == ("cifar10", 0)
    with pytest.raises(IGPTError, match="no dataset given"):
        ModelIdentity("hf:openai/imagegpt-small").data(None)
