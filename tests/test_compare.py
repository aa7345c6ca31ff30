"""``igpt-eval compare`` on two tiny models: probes, kNN, CKA, the controls (pixels, native
pixels, random-weights twins), bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from igpt_eval.analysis.similarity import knn_accuracy
from igpt_eval.cache import ActivationCache
from igpt_eval.cli import build_parser, main
from igpt_eval.data.palette import Palette
from igpt_eval.errors import IGPTError
from igpt_eval.model.sources import resolve_model
from igpt_eval.predictions import load_predictions
from igpt_eval.probes.pixels import pixel_features
from igpt_eval.reporting.tables import comparison_table, load_cka, load_models
from igpt_eval.results import COLUMNS, load_results
from igpt_eval.studies.compare import DEFAULT_MODELS, check_models


@pytest.fixture(scope="module")
def compared(tiny_comparison):
    return tiny_comparison


@pytest.fixture(scope="module")
def names(tiny_pair):
    """The two models' labels (name and weights hash): what result tables call them."""
    return tuple(resolve_model(d).label for d in tiny_pair[1:3])


def test_results_rows(compared, tiny_pair, names):
    AR, BERT = names
    root = tiny_pair[0]
    df = load_results(root / "cmp/results.parquet")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert set(df.probe) == {"lbfgs", "knn", "pixels", "pixels_native"}
    test = df[(df.split == "test") & (df.metric == "accuracy")]
    for model in (AR, BERT):
        for probe in ("lbfgs", "knn"):
            rows = test[(test.model == model) & (test.probe == probe)]
            assert sorted(rows.layer) == [0, 1, 2, 3]
            assert (rows.ci_low <= rows.value).all() and (rows.value <= rows.ci_high).all()
        # The random-weights twin: linear probes of every layer, no kNN.
        twin = test[test.model == f"{model} (random weights)"]
        assert set(twin.probe) == {"lbfgs"} and sorted(twin.layer) == [0, 1, 2, 3]
        # what the features were extracted from is on every row: BERT's unmasked by default
        assert (test[test.model == model].bert_masks == 0).all()
        assert (twin.n_train == 96).all() and (twin.n_eval == 32).all()
    for name in ("pixels", "pixels_native"):
        px = test[test.probe == name]
        assert len(px) == 1 and px.model.iloc[0] == name and px.n_eval.iloc[0] == 32
        # 8x8 grey images (the models' size is the native one here): 64 features, and the
        # probe saw the 96 train+val rows
        assert px.n_train.iloc[0] == 96 and px.n_features.iloc[0] == 64


def test_knn_rows_are_the_analysis_on_the_caches(compared, tiny_pair, names):
    AR, BERT = names
    root = tiny_pair[0]
    folder = next((root / "acts").glob("tiny-bert-*"))
    tr, va, te = (ActivationCache.open(folder / s) for s in ("train", "val", "test"))
    bank = np.concatenate([tr[2], va[2]])
    want = knn_accuracy(bank, np.concatenate([tr.labels, va.labels]), te[2], te.labels)
    r = compared.results
    got = r[(r.probe == "knn") & (r.model == BERT) & (r.layer == 2)]
    assert got.value.iloc[0] == pytest.approx(want.accuracy)
    assert got.k.iloc[0] == 20 and got.temperature.iloc[0] == pytest.approx(0.07)
    # The layer is chosen on validation: val queries against a train-only bank.
    val = got[got.split == "val"]
    assert val.value.iloc[0] == pytest.approx(knn_accuracy(tr[2], tr.labels, va[2], va.labels)[0])
    assert val.n_train.iloc[0] == len(tr.labels) and val.n_eval.iloc[0] == len(va.labels)
    np.testing.assert_array_equal(compared.predictions.pred[f"{BERT}/knn/blocks.2.ln_1"], want.pred)


def test_paired_rows_and_predictions(compared, tiny_pair, names):
    AR, BERT = names
    root = tiny_pair[0]
    df = load_results(root / "cmp/results.parquet")
    pred = load_predictions(root / "cmp")
    # Every test row has its predictions, and they give its accuracy.
    test = df[(df.split == "test") & (df.metric == "accuracy")]
    # 2 models x 4 layers x (lbfgs, knn, twin's lbfgs) + 2 pixel controls
    assert len(pred) == len(test) == 2 * 4 * 3 + 2
    for r in test.itertuples():
        assert pred.correct(f"{r.model}/{r.probe}/{r.site}").mean() == pytest.approx(r.value)
    diffs = df[df.metric == "accuracy_diff"]
    got = sorted(zip(diffs.contrast, diffs.model, diffs.probe, diffs.vs_model, strict=True))
    assert got == [
        ("best_vs_best", AR, "knn", BERT),
        ("best_vs_best", AR, "lbfgs", BERT),
        ("best_vs_last", AR, "knn", AR),
        ("best_vs_last", AR, "lbfgs", AR),
        ("best_vs_last", BERT, "knn", BERT),
        ("best_vs_last", BERT, "lbfgs", BERT),
        ("best_vs_pixels", AR, "lbfgs", "pixels"),
        ("best_vs_pixels", BERT, "lbfgs", "pixels"),
        ("best_vs_pixels_native", AR, "lbfgs", "pixels_native"),
        ("best_vs_pixels_native", BERT, "lbfgs", "pixels_native"),
        ("best_vs_random", AR, "lbfgs", AR + " (random weights)"),
        ("best_vs_random", BERT, "lbfgs", BERT + " (random weights)"),
    ]
    assert ((diffs.ci_low <= diffs.value) & (diffs.value <= diffs.ci_high)).all()
    assert ((diffs.p_value > 0) & (diffs.p_value <= 1)).all()
    # Each difference is the difference of the two test rows it names; "best" is on val.
    acc = test.set_index(["model", "probe", "layer"]).value
    t = comparison_table(compared.results).set_index("model")
    for r in diffs.itertuples():
        b = acc[(r.model, r.probe, r.layer)] - acc[(r.vs_model, r.vs_probe, int(r.vs_layer))]
        assert r.value == pytest.approx(b)
        if r.probe == "lbfgs":
            assert r.layer == t.loc[r.model, "best_layer"]
    gap = diffs[(diffs.contrast == "best_vs_last") & (diffs.probe == "lbfgs")]
    assert t.loc[AR, "gap_p"] == gap[gap.model == AR].p_value.iloc[0]


def test_cka_table(compared, tiny_pair, names):
    AR, BERT = names
    cka = load_cka(tiny_pair[0] / "cmp")
    assert len(cka) == 3 * 16  # ar×ar, ar×bert, bert×bert; 4 layers each
    own = cka[(cka.model_a == AR) & (cka.model_b == AR)]
    assert np.allclose(own[own.layer_a == own.layer_b].value, 1.0)
    M = own.pivot(index="layer_a", columns="layer_b", values="value").to_numpy()
    np.testing.assert_allclose(M, M.T)
    cross = cka[(cka.model_a == AR) & (cka.model_b == BERT)]
    assert len(cross) == 16 and ((cross.value > 0) & (cross.value <= 1 + 1e-9)).all()
    assert not np.allclose(cross[cross.layer_a == cross.layer_b].value, 1.0)


def test_table_and_files(compared, tiny_pair, names):
    AR, BERT = names
    root = tiny_pair[0]
    t = comparison_table(compared.results).set_index("model")
    assert list(t.index) == [AR, BERT, "pixels", "pixels_native"]
    s = t.loc[BERT]
    assert s.gap_pp == pytest.approx(100 * (s.best_acc - s.last_acc))
    r = compared.results
    last = r[(r.model == BERT) & (r.probe == "lbfgs") & (r.split == "test")]
    last = last[(last.metric == "accuracy") & (last.layer == 3)]
    assert s.last_acc == pytest.approx(last.value.iloc[0])
    md = (root / "cmp/tables/comparison.md").read_text()
    assert f"| {AR} | ar |" in md and "raw pixels" in md
    assert "raw pixels, native resolution" in md and "best − random (pp)" in md
    assert "multi-layer" not in md  # not run: its columns are left out
    for f in ("depth_curve.png", "depth_curve.svg", "tables/comparison.csv", "cka/cka.csv"):
        assert (root / "cmp" / f).stat().st_size > 0
    models = load_models(root / "cmp")
    assert models[BERT]["objective"] == "bert" and models[AR]["n_layer"] == 3


def test_pixel_features_decode_tokens():
    pal = Palette(np.array([[-1.0, 0, 1], [1, 1, 1], [0, 0.5, -0.5]], np.float32))
    tokens = np.array([[0, 2], [1, 1]], np.uint16)
    X = pixel_features(pal, tokens)
    assert X.shape == (2, 6) and X.dtype == np.float32
    np.testing.assert_array_equal(X[0], [-1, 0, 1, 0, 0.5, -0.5])


def test_compare_cli(compared, tiny_pair, capsys, monkeypatch, names):
    AR, BERT = names
    root, ar, bert, npz = tiny_pair
    monkeypatch.chdir(root)
    monkeypatch.setenv("IGPT_EVAL_CACHE", str(root / "runs/cache"))  # the library run's tokens
    args = [
        "compare",
        "--models",
        str(ar),
        str(bert),
        "--dataset",
        f"npz:{npz}",
        "--out",
        str(root / "cli"),
        "--cache",
        str(root / "acts"),
        "--no-progress",
    ]
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the library run: float32 sums depend on the thread count
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert f"| {BERT} | bert |" in out and "raw pixels" in out
    a = load_results(root / "cli/results.parquet")
    b = compared.results
    key = ["model", "probe", "split", "layer", "metric", "C"]
    a, b = (d[d.split == "test"].sort_values(key) for d in (a, b))
    np.testing.assert_allclose(a.value.to_numpy(float), b.value.to_numpy(float))


def test_compare_defaults_to_the_shipped_models():
    args = build_parser().parse_args(["compare"])
    assert args.model is None and args.models is None  # the CLI then takes DEFAULT_MODELS
    assert [Path(p).name for p in DEFAULT_MODELS] == ["fmnist-ar", "fmnist-bert"]
    two = build_parser().parse_args(["compare", "--model", "a", "--model", "b"])
    assert two.model == ["a", "b"]


def _copy(src, dst, *, dataset=None, palette=None):
    shutil.copytree(src, dst)
    if dataset:
        (dst / "run.json").write_text(json.dumps({"dataset": dataset}))
    if palette is not None:
        palette.save(dst / "palette.npy")
    return dst


def test_compare_bad_input(tiny_pair, tmp_path, capsys):
    _, ar, bert, npz = tiny_pair
    other = Palette(np.linspace(-1, 1, 16, dtype=np.float32)[::-1, None].copy())
    with pytest.raises(IGPTError, match="different palettes"):
        check_models([ar, _copy(bert, tmp_path / "b", palette=other)], "npz:x")
    a = _copy(ar, tmp_path / "a", dataset="cifar10")
    b = _copy(bert, tmp_path / "b2", dataset="fashion-mnist")
    with pytest.raises(IGPTError, match="different datasets"):
        check_models([a, b])
    with pytest.raises(IGPTError, match="distinct"):
        check_models([ar, _copy(ar, tmp_path / "x" / ar.name)], "npz:x")
    for models, match in (([a, b], "different datasets"), ([tmp_path / "nope"], "no model")):
        assert main(["compare", "--models", *map(str, models), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0]
