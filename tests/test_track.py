"""``igpt-eval track``: probes over training snapshots, their summary, figures and bad input."""

import shutil

import numpy as np
import pandas as pd
import pytest

from igpt_eval.cli import main
from igpt_eval.studies.track import loss_accuracy_correlation, track_summary


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("igpt-eval: error: "), err
    return err[0]


def _pretrain(tmp, npz, out, *extra):
    args = [
        "pretrain", "--dataset", f"npz:{npz}", "--model", "tiny", "--steps", "6",
        "--batch-size", "8", "--lr", "0.01", "--eval-images", "6",
        "--token-cache", str(tmp / "tokens"), "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip
    assert main(args) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny AR runs with snapshots at steps 0, 3 and 6 (seeds 0 and 1), a BERT run, and
    the npz dataset they were trained on."""
    tmp = tmp_path_factory.mktemp("track")
    rng = np.random.default_rng(3)
    labels = np.arange(80) % 4
    levels = np.array([30, 100, 170, 240])[labels]  # one grey level per class, plus noise
    images = np.clip(levels[:, None, None] + rng.normal(0, 30, (80, 8, 8)), 0, 255)
    npz = tmp / "grey.npz"
    images = images.astype(np.uint8)[..., None]
    np.savez(npz, images=images, labels=labels, test_images=images[:24], test_labels=labels[:24])
    a, b, bert = tmp / "run-a", tmp / "run-b", tmp / "run-bert"
    _pretrain(tmp, npz, a, "--snapshot-steps", "0,3,6")
    _pretrain(tmp, npz, b, "--snapshot-steps", "0,3,6", "--seed", "1")
    _pretrain(tmp, npz, bert, "--snapshot-steps", "0,6", "--objective", "bert")
    return tmp, npz, a, b, bert


def _track(runs_, out, *extra):
    tmp, npz, *_ = runs_
    return main(
        ["track", "--dataset", f"npz:{npz}", "--train-size", "all", "--val-size", "all",
         "--test-size", "all", "--no-progress", "--out", str(out), *extra]
    )  # fmt: skip


def test_track_probes_every_layer_of_every_snapshot(runs, tmp_path, capsys):
    _, _, a, b, _ = runs
    out = tmp_path / "track"
    assert _track(runs, out, "--run", str(a), "--run", str(b)) == 0
    printed = capsys.readouterr().out
    assert "Spearman rho" in printed and "run-a" in printed and "run-b" in printed
    df = pd.read_parquet(out / "results.parquet")
    for col in ("run", "step", "val_loss", "tokens_seen"):
        assert col in df
    test = df[(df.split == "test") & (df.metric == "accuracy") & (df.probe == "lbfgs")]
    # 2 runs x 3 snapshots x 4 layers (tiny: 3 blocks + ln_f), each scored once on test.
    assert len(test) == 2 * 3 * 4
    assert sorted(test.step.unique()) == [0, 3, 6]
    summ = pd.read_parquet(out / "track_summary.parquet")
    assert len(summ) == 6 and set(summ.run) == {"run-a", "run-b"}
    # The untrained network scores ln(16) nats per token (a zero head); training lowers it.
    init = summ[summ.step == 0]
    assert np.allclose(init.val_loss, np.log(16), atol=1e-4)
    assert (summ[summ.step == 6].val_loss.values < init.val_loss.values).all()
    for stem in ("track_loss_vs_probe", "track_heatmap-run-a", "track_depth_curves-run-b"):
        assert (out / f"{stem}.png").stat().st_size > 1000
    md = (out / "README.md").read_text()
    assert md.startswith("# Training dynamics") and "| run-b | 6 |" in md
    # A second track over the same snapshots re-extracts nothing: the caches are reused.
    caches = sorted((tmp_path / "cache" / "activations").iterdir())
    stamps = {c: (c / "manifest.json").stat().st_mtime_ns for c in caches}
    assert _track(runs, tmp_path / "again", "--run", str(a), "--run", str(b)) == 0
    assert sorted((tmp_path / "cache" / "activations").iterdir()) == caches
    assert {c: (c / "manifest.json").stat().st_mtime_ns for c in caches} == stamps
    again = pd.read_parquet(tmp_path / "again" / "results.parquet")
    cols = ["run", "step", "layer", "split", "probe", "value"]
    pd.testing.assert_frame_equal(
        again[cols].reset_index(drop=True), df[cols].reset_index(drop=True)
    )


def test_track_a_bert_run_and_chosen_steps(runs, tmp_path):
    bert = runs[4]
    assert _track(runs, tmp_path / "t", "--run", str(bert), "--steps", "6") == 0
    summ = pd.read_parquet(tmp_path / "t" / "track_summary.parquet")
    assert summ.step.tolist() == [6]
    df = pd.read_parquet(tmp_path / "t" / "results.parquet")
    assert (df[df.probe == "lbfgs"].objective == "bert").all()


def test_summary_picks_the_best_layer_on_validation_and_correlates():
    rows = []
    for step, loss, accs in [(0, 2.7, (0.5, 0.6)), (10, 2.0, (0.7, 0.65)), (20, 1.5, (0.8, 0.7))]:
        for layer, acc in enumerate(accs):
            common = dict(run="r", step=step, val_loss=loss, tokens_seen=step * 64, layer=layer,
                          site=f"blocks.{layer}.ln_1", probe="lbfgs", metric="accuracy", C=1.0,
                          lr=np.nan, n_iter=5, converged=True)  # fmt: skip
            # Validation prefers the other layer at step 20: the summary must follow val.
            val = acc if step != 20 else (0.9 if layer == 1 else 0.6)
            rows.append(dict(common, split="val", value=val, selected=True))
            rows.append(dict(common, split="test", value=acc, ci_low=acc - 0.01,
                             ci_high=acc + 0.01, selected=True))  # fmt: skip
    summ = track_summary(pd.DataFrame(rows))
    assert summ.best_layer.tolist() == [1, 0, 1]
    assert summ.best_test_acc.tolist() == pytest.approx([0.6, 0.7, 0.7])
    corr = loss_accuracy_correlation(summ)
    assert corr.spearman_rho.iloc[0] < -0.8  # accuracy rises as the loss falls
    assert corr.n_snapshots.iloc[0] == 3


def test_bad_input_is_one_line_and_overwrites_nothing(runs, tmp_path, capsys):
    tmp, npz, a, b, bert = runs
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _track(runs, tmp_path / "o", "--run", str(empty)) == 2
    assert "holds no snapshots" in _one_error(capsys)
    assert _track(runs, tmp_path / "o", "--run", str(tmp_path / "nope")) == 2
    assert "no run folder" in _one_error(capsys)
    assert _track(runs, tmp_path / "o", "--run", str(a), "--steps", "4") == 2
    assert "no snapshot of step(s) [4]" in _one_error(capsys)
    assert _track(runs, tmp_path / "o", "--run", str(a), "--steps", "x") == 2
    assert "comma-separated steps" in _one_error(capsys)
    # Snapshots of another model in the same folder.
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.copytree(bert / "snapshots" / "step-000006", mixed / "snapshots" / "step-000009")
    assert _track(runs, tmp_path / "o", "--run", str(mixed)) == 2
    assert "different model configs" in _one_error(capsys)
    # Snapshots with another palette.
    other = tmp_path / "other-palette"
    shutil.copytree(a, other)
    from igpt_eval.data.palette import Palette

    pal = Palette.load(other / "snapshots" / "step-000003" / "palette.npy")
    Palette(pal.centers[::-1].copy() * 0.5).save(
        other / "snapshots" / "step-000003" / "palette.npy"
    )
    assert _track(runs, tmp_path / "o", "--run", str(other)) == 2
    assert "different (or missing) palettes" in _one_error(capsys)
    assert not (tmp_path / "o").exists()  # nothing written for bad input
    # Results already there: refused without --overwrite, left as they were.
    out = tmp_path / "kept"
    out.mkdir()
    (out / "results.parquet").write_bytes(b"mine")
    assert _track(runs, out, "--run", str(a)) == 2
    assert "--overwrite" in _one_error(capsys)
    assert (out / "results.parquet").read_bytes() == b"mine"
    # --snapshots must be a positive integer (pretrain's side of the same feature).
    assert main(["pretrain", "--snapshots", "-2", "--out", str(tmp_path / "p")]) == 2
    assert "positive integer" in _one_error(capsys)


def test_random_weights_control_is_the_runs_own_initialisation(runs):
    import torch
    from safetensors.torch import load_file

    from igpt_eval.model.igpt import IGPT
    from igpt_eval.model.loading import open_model

    b = runs[3]  # trained with --seed 1
    step0 = load_file(b / "snapshots" / "step-000000" / "model.safetensors")
    trained, _, ident = open_model(b)
    control, palette, cident = open_model(b, random_weights=True)
    init = IGPT.initialised(trained.config, 1).state_dict()
    for k, v in control.state_dict().items():
        assert torch.equal(v, step0[k]) and torch.equal(v, init[k])
    assert not torch.equal(trained.wte.weight, control.wte.weight)
    assert "random weights, seed 1" in cident.model
    assert cident.weights_hash != ident.weights_hash
    state = torch.get_rng_state()
    IGPT.initialised(trained.config, 5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


def test_snapshots_name_their_dataset(runs, tmp_path, capsys):
    a = runs[2]
    args = ["track", "--train-size", "all", "--val-size", "all", "--test-size", "all",
            "--steps", "6", "--no-progress"]  # fmt: skip
    # No --dataset: each snapshot carries its run's run.json (dataset and split seed).
    assert main([*args, "--run", str(a), "--out", str(tmp_path / "t")]) == 0
    old = tmp_path / "old"
    shutil.copytree(a, old)
    for f in (old / "snapshots").glob("*/run.json"):
        f.unlink()  # as snapshots written before they carried it
    capsys.readouterr()
    assert main([*args, "--run", str(old), "--out", str(tmp_path / "u")]) == 2
    assert "give --dataset" in _one_error(capsys)
