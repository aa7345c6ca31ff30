"""``igpt-eval probe`` end to end on a tiny model, the SGD probe, and bad input."""

import numpy as np
import pytest
import torch

from igpt_eval import IGPTError
from igpt_eval.analysis.paired import format_difference
from igpt_eval.cli import main
from igpt_eval.data.palette import Palette
from igpt_eval.model import IGPT, save_model
from igpt_eval.model.config import IGPTConfig
from igpt_eval.predictions import load_predictions
from igpt_eval.probes import probe_lbfgs
from igpt_eval.probes.sgd import ArraySource, SGDProtocol, probe_sgd
from igpt_eval.results import COLUMNS, load_results, to_frame
from igpt_eval.studies.probe import summary
from tests.test_probes import synthetic


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model(tmp_path, tiny_npz):
    torch.manual_seed(0)
    model = IGPT(IGPTConfig.preset("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    rng = np.random.default_rng(0)
    pal = Palette(rng.uniform(-1, 1, (16, 3)).astype(np.float32))
    return save_model(model, tmp_path / "model", palette=pal)


def probe_args(tmp_path, model, npz, *extra):
    return [
        "probe",
        "--model",
        str(model),
        "--dataset",
        f"npz:{npz}",
        "--all-layers",
        "--cache",
        str(tmp_path / "acts"),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        *extra,
    ]


def test_probe_cli_end_to_end(tmp_path, tiny_model, tiny_npz, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # token caches go under ./runs
    assert main(probe_args(tmp_path, tiny_model, tiny_npz)) == 0
    out = capsys.readouterr().out
    assert "<- best (val)" in out and "(last)" in out
    df = load_results(tmp_path / "out/results.parquet")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert set(df.probe) == {"lbfgs", "pixels", "pixels_native"}  # both pixel controls
    test = df[(df.split == "test") & (df.metric == "accuracy") & (df.probe == "lbfgs")]
    assert sorted(test.layer) == [0, 1, 2, 3]
    assert set(test.site) == {"blocks.0.ln_1", "blocks.1.ln_1", "blocks.2.ln_1", "ln_f"}
    # The two paired lines under the table, from the validation-chosen layer.
    s = summary(df)
    best, last = int(s[s.best].layer.iloc[0]), 3
    diffs = df[df.metric == "accuracy_diff"].set_index("contrast")
    assert set(diffs.index) == {"best_vs_last", "best_vs_pixels", "best_vs_pixels_native"}
    assert (diffs.layer == best).all() and diffs.vs_layer["best_vs_last"] == last
    px = diffs.loc["best_vs_pixels"]
    line = f"best (layer {best}) − raw pixels: {format_difference(px)}"
    assert line in out and "McNemar p" in line
    if best != last:
        assert f"best (layer {best}) − last (layer {last}): " in out
    else:
        assert f"best (layer {best}) is the last layer" in out
    # Per-example test predictions beside the results: their accuracy is the rows'.
    pred = load_predictions(tmp_path / "out")
    assert len(pred.labels) == 12 and len(pred) == 6  # 4 layers + the two pixel controls
    for r in df[(df.split == "test") & (df.metric == "accuracy")].itertuples():
        assert pred.correct(f"{r.model}/{r.probe}/{r.site}").mean() == pytest.approx(r.value)
    assert (tmp_path / "out/results.csv").is_file()
    png = (tmp_path / "out/depth_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # A second run reuses the caches and gives the same numbers (replacing its results only
    # when asked to).
    assert main(probe_args(tmp_path, tiny_model, tiny_npz)) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(probe_args(tmp_path, tiny_model, tiny_npz, "--overwrite")) == 0
    again = load_results(tmp_path / "out/results.parquet")
    np.testing.assert_allclose(again.value.to_numpy(float), df.value.to_numpy(float))


def test_probe_cli_train_size(tmp_path, tiny_model, tiny_npz, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The tiny set's train split has 54 images (18 per class) and its test split 12: probe
    # with samples of 30 and 9 (validation, 6 images, is below the default cap of 2,000).
    sample = ["--train-size", "30", "--test-size", "9"]
    assert main(probe_args(tmp_path, tiny_model, tiny_npz, *sample)) == 0
    out = capsys.readouterr().out
    assert "after training on 30; refit on train+val, tested once on 9 (stratified" in out
    df = load_results(tmp_path / "out/results.parquet")
    assert set(df[df.split == "val"].n_train) == {30}
    assert set(df[(df.split == "test") & (df.metric == "accuracy")].n_eval) == {9}
    from igpt_eval.cache import ActivationCache

    train = ActivationCache.open(tmp_path / "acts/train")
    assert np.bincount(np.asarray(train.labels)).tolist() == [10, 10, 10]  # stratified
    assert "30 of 54 images" in train.manifest.split
    test = ActivationCache.open(tmp_path / "acts/test")
    assert np.bincount(np.asarray(test.labels)).tolist() == [3, 3, 3]
    assert ActivationCache.open(tmp_path / "acts/val").n == 6  # whole: below its cap
    # The whole split is another input: the cache folder is not silently reused for it.
    full = probe_args(tmp_path, tiny_model, tiny_npz, "--train-size", "all", "--test-size", "9",
                      "--overwrite")  # fmt: skip
    assert main(full) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--rebuild-cache" in err
    assert ActivationCache.open(tmp_path / "acts/train").n == 30  # refused: left as it was
    assert main([*full, "--rebuild-cache"]) == 0
    assert ActivationCache.open(tmp_path / "acts/train").n == 54
    assert main([*probe_args(tmp_path, tiny_model, tiny_npz), "--train-size", "0"]) == 2
    assert "--train-size" in capsys.readouterr().err
    assert main([*probe_args(tmp_path, tiny_model, tiny_npz), "--val-size", "x"]) == 2
    assert "--val-size" in capsys.readouterr().err


def test_probe_cli_sgd_and_layers(tmp_path, tiny_model, tiny_npz, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = probe_args(
        tmp_path, tiny_model, tiny_npz, "--method", "sgd", "--no-pixels", "--no-native-pixels"
    )
    args.remove("--all-layers")
    assert main([*args, "--layers", "1,3"]) == 0
    df = load_results(tmp_path / "out/results.parquet")
    assert set(df.layer) == {1, 3} and set(df.probe) == {"sgd"}


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--layers", "9"], "out of range"),
        (["--layers", "x"], "--layers takes"),
        (["--site", "nope"], "unknown site"),
        (["--backend", "cuml"], "cuML|GPU"),
    ],
)
def test_probe_cli_bad_input(tmp_path, tiny_model, tiny_npz, capsys, monkeypatch, extra, match):
    monkeypatch.chdir(tmp_path)
    args = probe_args(tmp_path, tiny_model, tiny_npz, *extra)
    if "--layers" in extra:
        args.remove("--all-layers")
    if torch.cuda.is_available() and "cuml" in extra:
        pytest.skip("a GPU is present")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("igpt-eval: error:")
    import re

    assert re.search(match, err[0])


def test_probe_cli_missing_or_corrupt(tmp_path, tiny_model, tiny_npz, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(probe_args(tmp_path, tmp_path / "nope", tiny_npz)) == 2
    assert "no model at" in capsys.readouterr().err
    assert main(probe_args(tmp_path, tiny_model, tiny_npz)) == 0
    capsys.readouterr()
    (tmp_path / "acts/test/manifest.json").write_text("{broken")
    assert main(probe_args(tmp_path, tiny_model, tiny_npz, "--overwrite")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("igpt-eval: error:")


def test_sgd_probe_close_to_lbfgs():
    tr, va, te = synthetic(900, 0), synthetic(300, 1), synthetic(600, 2)
    src = {
        k: ArraySource(f.X, f.y, [0, 1])
        for k, f in zip(("train", "val", "test"), (tr, va, te), strict=True)
    }
    protocol = SGDProtocol(epochs=20, batch_size=64)
    sgd = to_frame(probe_sgd(src, [0, 1], meta={}, sites=["a", "b"], protocol=protocol).rows)
    lb = to_frame(probe_lbfgs(tr, va, te, [0, 1], meta={}, sites=["a", "b"]).rows)
    pick = lambda d: d[(d.split == "test") & (d.metric == "accuracy")].value.to_numpy()  # noqa: E731
    assert abs(pick(sgd)[1] - pick(lb)[1]) <= 0.01
    val = sgd[sgd.split == "val"]
    assert len(val) == 2 * 8 and val.groupby("layer").selected.sum().tolist() == [1, 1]


def test_whitening_is_zca():
    from igpt_eval.probes.sgd import feature_stats

    rng = np.random.default_rng(0)
    # Correlated features with scales 1..30: covariance eigenvalues spread by ~1e3.
    A = np.linalg.qr(rng.normal(size=(12, 12)))[0] * np.logspace(0, 1.5, 12)
    X = (rng.normal(size=(2000, 12)) @ A + 5.0)[None].astype(np.float32)
    src = ArraySource(X, np.arange(2000) % 3, [0])
    mean, W = feature_stats(src, [0])
    white = (X[0] - mean[0]) @ W[0]
    np.testing.assert_allclose(white.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(12), atol=2e-3)
    np.testing.assert_allclose(W[0], W[0].T, atol=1e-5)  # ZCA: the symmetric whitening
    mean, S = feature_stats(src, [0], "standardize")
    np.testing.assert_allclose(np.diag(S[0]) * X[0].std(0), 1, rtol=1e-3)
    with pytest.raises(IGPTError, match="preprocessing"):
        feature_stats(src, [0], "pca")


@pytest.mark.slow
def test_sgd_within_one_point_of_lbfgs_on_the_shipped_model(tmp_path, monkeypatch):
    """The depth-curve bar, on the real thing: the shipped AR model's Fashion-MNIST features
    (the default sample: 5,000 train, 2,000 val, 5,000 test images), every layer."""
    from igpt_eval.data.registry import read_source
    from igpt_eval.studies.probe import probe_model
    from igpt_eval.studies.settings import ProbeSettings

    try:
        read_source("fashion-mnist")
    except IGPTError:
        pytest.skip("needs Fashion-MNIST (Debian's dataset-fashion-mnist)")
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(2)
    s, acts = ProbeSettings(pixels=False), tmp_path / "acts"
    lb = probe_model(settings=s, cache_dir=acts).summary.set_index("layer").test_acc
    sgd = probe_model(settings=s.replace(method="sgd"), cache_dir=acts).summary
    sgd = sgd.set_index("layer").test_acc
    assert (abs(sgd - lb) <= 0.01).all(), (100 * (sgd - lb)).round(2).to_dict()


def test_load_results_errors(tmp_path):
    from igpt_eval import IGPTError

    with pytest.raises(IGPTError, match="no results files"):
        load_results(tmp_path)
    (tmp_path / "r.csv").write_text("model,value\nm,1\n")
    with pytest.raises(IGPTError, match="lacks results columns"):
        load_results(tmp_path / "r.csv")


def test_empty_split_is_one_line(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    npz = tmp_path / "empty_test.npz"
    rng = np.random.default_rng(0)
    np.savez(
        npz,
        images=rng.integers(0, 255, (30, 8, 8, 3), dtype=np.uint8),
        labels=np.arange(30) % 3,
        test_images=np.zeros((0, 8, 8, 3), np.uint8),
        test_labels=np.zeros(0, np.int64),
    )
    assert main(probe_args(tmp_path, tiny_model, npz)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no images" in err[0]


def test_summary_marks_one_best_layer_on_ties():
    rows = []
    for layer, val in enumerate([0.8, 0.9, 0.9, 0.7]):
        common = dict(layer=layer, site=f"s{layer}", metric="accuracy", C=1.0, lr=np.nan)
        common.update(n_iter=5, converged=True, ci_low=0.5, ci_high=0.9)
        rows.append(dict(common, split="val", value=val, selected=True))
        rows.append(dict(common, split="test", value=0.6 + 0.01 * layer, selected=True))
    s = summary(to_frame(rows))
    assert s.best.tolist() == [False, True, False, False]  # the earlier of the tied layers
    assert s["last"].tolist() == [False, False, False, True]
