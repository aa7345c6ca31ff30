"""What a new user meets first: outputs never replaced silently, default folders one per
model, report words decided by paired statistics, and a public API that finds its parts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import igpt_eval
from igpt_eval import IGPTError
from igpt_eval.cli import main
from igpt_eval.model.sources import resolve_model
from igpt_eval.predictions import Predictions
from igpt_eval.reporting.words import describe_depth_curve, shape_words


@pytest.fixture
def tiny_ar(tiny_pair, one_torch_thread):
    root, ar, _, npz = tiny_pair
    return ar, npz


def _probe(tmp_path, ar, npz, *extra):
    return ["probe", "--model", str(ar), "--dataset", f"npz:{npz}", "--cache",
            str(tmp_path / "acts"), "--no-progress", *extra]  # fmt: skip


def test_probe_refuses_to_replace_results(tmp_path, tiny_ar, capsys):
    ar, npz = tiny_ar
    out = tmp_path / "out"
    assert main(_probe(tmp_path, ar, npz, "--out", str(out))) == 0
    before = (out / "results.parquet").read_bytes()
    capsys.readouterr()
    assert main(_probe(tmp_path, ar, npz, "--out", str(out))) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "results.parquet").read_bytes() == before
    assert main(_probe(tmp_path, ar, npz, "--out", str(out), "--overwrite")) == 0


def test_default_probe_folders_are_one_per_model(tmp_path, tiny_pair, monkeypatch, capsys):
    """Two folders named alike with other weights get two output folders."""
    import shutil

    root, ar, bert, npz = tiny_pair
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    shutil.copytree(ar, tmp_path / "x" / "model")
    shutil.copytree(bert, tmp_path / "y" / "model")
    outs = set()
    for d in ("x", "y"):
        assert main(["probe", "--model", f"{d}/model", "--dataset", f"npz:{npz}",
                     "--no-progress", "--no-pixels"]) == 0  # fmt: skip
        outs |= {p.name for p in (tmp_path / "runs" / "probe").iterdir()}
    assert len(outs) == 2 and all(o.startswith("model-") for o in outs), outs


@pytest.mark.parametrize("command", ["compare", "report"])
def test_compare_and_report_refuse_to_replace(tmp_path, command, capsys):
    out = tmp_path / "out"
    out.mkdir()
    marker = "results.parquet" if command == "compare" else "README.md"
    (out / marker).write_text("mine")
    args = [command, "--out", str(out)] + (
        ["--results", str(tmp_path)] if command == "report" else []
    )
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / marker).read_text() == "mine"


# ------------------------------------------------------------------------- report words
def _summary(acc, best):
    L = len(acc) - 1
    s = pd.DataFrame(dict(layer=range(L + 1), test_acc=acc, ci_low=np.array(acc) - 0.01,
                          ci_high=np.array(acc) + 0.01))  # fmt: skip
    s["best"], s["last"] = s.layer == best, s.layer == L
    return s


def _diff(value, lo, hi):
    return pd.DataFrame([dict(contrast="best_vs_last", value=value, ci_low=lo, ci_high=hi,
                              p_value=0.01, n=1000)])  # fmt: skip


@pytest.mark.parametrize(
    "acc, best, diff, words",
    [
        ([0.5, 0.8, 0.9, 0.8], 2, (0.1, 0.07, 0.13), "**peaks inside the network**, at layer 2"),
        ([0.9, 0.8, 0.7, 0.6], 0, (0.3, 0.25, 0.35), "falls from the embeddings"),
        ([0.5, 0.80, 0.8011, 0.80], 2, (0.0011, -0.01, 0.012), "is **flat** from layer 2"),
        ([0.5, 0.6, 0.7, 0.8], 3, None, "validation chooses the last layer"),
        ([0.5, 0.8, 0.7, 0.9], 1, (-0.1, -0.13, -0.07), "the last layer is significantly above"),
    ],
)
def test_shape_words_come_from_the_paired_difference(acc, best, diff, words):
    d = None if diff is None else _diff(*diff)
    text = describe_depth_curve("m", _summary(acc, best), None, d)
    assert words in text, text
    assert "unimodal" not in text  # a dip within noise decides nothing
    r = None if d is None else d.iloc[0]
    assert words in shape_words(best, len(acc) - 1, r)


def test_a_dip_within_noise_is_not_a_finding():
    # 0.11-point dip at layer 2, best - last within noise: flat, not "not unimodal".
    text = describe_depth_curve("m", _summary([0.5, 0.85, 0.8489, 0.85, 0.849], 3, ), None,
                                _diff(0.001, -0.005, 0.007))  # fmt: skip
    assert "**flat** from layer 3" in text


# ------------------------------------------------------------------------- public API
def test_public_api_exports_the_studies():
    for name in ("probe_model", "compare_models", "track_runs", "extract", "load_results",
                 "ProbeSettings", "resolve_model", "Predictions", "summary"):  # fmt: skip
        assert callable(getattr(igpt_eval, name)), name
        assert name in dir(igpt_eval)


def test_predictions_by_model_probe_and_layer():
    p = Predictions()
    y = np.array([0, 1, 1, 0])
    for site in ("blocks.0.ln_1", "blocks.1.ln_1", "ln_f"):
        p.add(f"m/lbfgs/{site}", y, y)
    assert p.key("m", "lbfgs", 1) == "m/lbfgs/blocks.1.ln_1"
    assert p.key("m", "lbfgs", 2) == "m/lbfgs/ln_f"  # the final norm: one past the blocks
    assert p.key("m", "lbfgs", "ln_f") == "m/lbfgs/ln_f"
    assert np.array_equal(p.get("m", "lbfgs", 0), y)
    with pytest.raises(IGPTError, match="held: m/lbfgs/blocks.0.ln_1, m/lbfgs/blocks.1.ln_1"):
        p.get("m", "knn", 1)
    with pytest.raises(IGPTError, match="held: "):
        p.correct("m/lbfgs/blocks.7.ln_1")


def test_extract_and_probe_share_one_cache(tiny_ar, tmp_path):
    """The managed cache key comes from normalised settings: extract() with defaults spelt
    out, or left out, finds the folder probe_model made."""
    from igpt_eval.cache import ExtractSettings, extract
    from igpt_eval.studies.probe import probe_model
    from igpt_eval.studies.settings import ProbeSettings

    ar, npz = tiny_ar
    whole = ProbeSettings(pixels=False, train_size=None, val_size=None, test_size=None)
    df = probe_model(ar, f"npz:{npz}", whole).results
    probed = df.attrs["caches"]["test"]
    assert str(extract(ar, f"npz:{npz}", "test").path) == probed
    spelt = extract(ar, f"npz:{npz}", "test", settings=ExtractSettings(
        site="ln_1", dtype="float32", compute="float32", bert_masks=0, batch_size=7))  # fmt: skip
    assert str(spelt.path) == probed


# ------------------------------------------------------------------------- figures
def test_figures_are_returned_with_legends_outside_and_integer_layers(tmp_path):
    from matplotlib.figure import Figure

    from igpt_eval.reporting.figures import cka_heatmap, depth_curve, save_figure

    s = _summary([0.5, 0.8, 0.9, 0.8], 2)
    fig = depth_curve({"m": s}, title="t")
    assert isinstance(fig, Figure)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # beside the axes, never over the data
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)  # 3 layers: no 0.5 ticks
    files = save_figure(fig, tmp_path / "curve")
    assert [f.suffix for f in files] == [".png", ".svg"] and all(f.is_file() for f in files)
    cka = pd.DataFrame([dict(model_a="m", model_b="m", layer_a=i, layer_b=j, n=10,
                             value=1.0 if i == j else 0.9 + 0.01 * (i + j))
                        for i in range(3) for j in range(3)])  # fmt: skip
    heat = cka_heatmap(cka, "m", "m", vmin=0.9)
    assert heat.axes[0].images[0].get_clim() == (0.9, 1.0)


def test_a_report_on_one_probe_folder_says_what_it_is(tiny_pair, tmp_path, one_torch_thread):
    """Title, source and training log are read from the data given: one AR model's probe
    folder is no "AR vs BERT" comparison, was written by probe, and has its log found."""
    import shutil

    root, ar, _, npz = tiny_pair
    model = tmp_path / "elsewhere" / "my-ar"
    shutil.copytree(ar, model)
    (model / "train_log.csv").write_text("step,train_loss,val_loss\n1,2.5,\n2,2.0,2.1\n")
    out = tmp_path / "probe"
    argv = ["probe", "--model", str(model), "--dataset", f"npz:{npz}", "--out", str(out),
            "--cache", str(tmp_path / "acts"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert main(["report", "--results", str(out), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "README.md").read_text()
    label = resolve_model(model).label  # my-ar-<weights hash>
    assert md.startswith(f"# Where do the best features live? {label}, layer by layer")
    assert "(written by `igpt-eval probe`)" in md and "AR vs BERT" not in md
    assert "No training log" not in md and (tmp_path / "r" / "training_curves.png").is_file()


# ------------------------------------------------------------------------ model labels
def test_two_folders_of_one_name_are_two_labels(tiny_pair, tmp_path):
    """x/model and y/model with other weights: other default folders, other rows."""
    import shutil

    from igpt_eval.model.sources import default_folder
    from igpt_eval.names import bare_name

    ar, bert = tiny_pair[1:3]
    x, y = tmp_path / "x" / "model", tmp_path / "y" / "model"
    shutil.copytree(ar, x)
    shutil.copytree(ar, y)
    shutil.copyfile(bert / "model.safetensors", y / "model.safetensors")
    a, b = resolve_model(x), resolve_model(y)
    assert a.name == b.name == "model" and a.label != b.label
    assert a.label == f"model-{a.weights_hash()[:8]}" and default_folder(x) == a.label
    assert bare_name(a.label) == "model" and bare_name(f"{b.label} (random weights)") == (
        "model (random weights)"
    )


def test_predictions_by_bare_name_when_unambiguous():
    p = Predictions()
    labels = np.array([0, 1, 1])
    p.add("m-1a2b3c4d/lbfgs/blocks.0.ln_1", np.array([0, 1, 0]), labels)
    assert p.get("m", "lbfgs", 0).tolist() == [0, 1, 0]
    assert p.key("m-1a2b3c4d", "lbfgs", 0) == "m-1a2b3c4d/lbfgs/blocks.0.ln_1"
    p.add("m-99999999/lbfgs/blocks.0.ln_1", np.array([1, 1, 1]), labels)
    with pytest.raises(IGPTError, match="held: m-1a2b3c4d/lbfgs"):
        p.get("m", "lbfgs", 0)  # two models of that name: the label is needed


def test_probe_results_of_the_same_name_and_other_weights_are_refused():
    from igpt_eval.results import probe_choice, to_frame

    rows = [dict(model="m-1a2b3c4d", probe="lbfgs", layer=0, site="s", C=1.0, split=s,
                 metric="accuracy", value=0.5, selected=True) for s in ("val", "test")]  # fmt: skip
    with pytest.raises(IGPTError, match="measured on other weights"):
        probe_choice(to_frame(rows), "m-99999999")


# ------------------------------------------------------------------------ one call
def test_probe_depth_curve_returns_results_and_a_figure(tiny_ar, tmp_path):
    from matplotlib.figure import Figure

    ar, npz = tiny_ar
    curve = igpt_eval.probe_depth_curve(ar, f"npz:{npz}", cache_dir=tmp_path / "acts")
    assert isinstance(curve, igpt_eval.DepthCurve) and isinstance(curve.figure, Figure)
    assert list(curve.summary.layer) == [0, 1, 2, 3] and curve.summary.best.sum() == 1
    assert set(curve.results.model) == {resolve_model(ar).label, "pixels", "pixels_native"}
    assert {"best_vs_last", "best_vs_pixels"} <= set(curve.differences.contrast)
    assert curve._repr_png_()[:4] == b"\x89PNG"
    assert [p.suffix for p in curve.save(tmp_path / "fig")] == [".png", ".svg"]
    # The same predictions the table was scored from, looked up by the bare name.
    b = int(curve.summary.query("best").layer.iloc[0])
    right = curve.predictions.get(resolve_model(ar).name, "lbfgs", b) == curve.predictions.labels
    row = curve.summary.query("best").iloc[0]
    assert right.mean() == pytest.approx(row.test_acc)


# ------------------------------------------------------------------------ split seed
def test_pretrain_splits_with_split_seed_not_seed(tiny_npz, tmp_path):
    from igpt_eval.model.record import RunRecord

    def run(name, *extra):
        out = tmp_path / name
        argv = ["pretrain", "--dataset", f"npz:{tiny_npz}", "--model", "tiny", "--steps", "2",
                "--batch-size", "4", "--eval-every", "1", "--eval-images", "4",
                "--token-cache", str(tmp_path / "tok"), "--no-progress", "--out", str(out),
                *extra]  # fmt: skip
        assert main(argv) == 0
        return RunRecord.read(out)

    a, b, c = run("a"), run("b", "--seed", "1"), run("c", "--split-seed", "1")
    assert a.train_fingerprint == b.train_fingerprint  # another run, the same split
    assert a.train_fingerprint != c.train_fingerprint
    assert (b.seed, b.data_seed, c.data_seed) == (1, 0, 1)
    # A run recorded before the split had its own seed read its split with --seed.
    assert RunRecord.from_json({"train_config": {"seed": 3}}).data_seed == 3


def test_model_figures_return_figures_and_write_nothing(tiny_pair, tmp_path):
    from matplotlib.figure import Figure

    from igpt_eval import load_model, load_palette
    from igpt_eval.reporting.model_figures import (
        completion_grid,
        loss_curve,
        sample_grid,
        save_png,
    )
    from igpt_eval.studies.samples import complete_images, sample_images

    ar = tiny_pair[1]
    log = tmp_path / "train_log.csv"
    log.write_text("step,train_loss,val_loss\n1,2.5,\n2,2.0,2.1\n")
    model, palette = load_model(ar), load_palette(ar)
    tokens = palette.encode(np.zeros((2, 8, 8, 1), np.uint8))
    drawn = [
        loss_curve(log, title="t"),
        completion_grid(complete_images(model, palette, tokens, n=2, samples=2)),
        sample_grid(sample_images(model, palette, 4)),
    ]
    assert all(isinstance(f, Figure) for f in drawn)
    assert [p.name for p in tmp_path.iterdir()] == ["train_log.csv"]  # nothing written
    assert save_png(drawn[0], tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
