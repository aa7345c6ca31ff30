"""The controls and the multi-layer probe: the random-weights twin, the native-resolution
pixels, the K layers around the best one concatenated; library and command line."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from igpt_eval.analysis.paired import paired_lines
from igpt_eval.cache import ActivationCache
from igpt_eval.cli import main
from igpt_eval.data.source import DataSource
from igpt_eval.errors import IGPTError
from igpt_eval.model import IGPT, load_model
from igpt_eval.model.sources import resolve_model
from igpt_eval.names import CONCAT, PIXELS_NATIVE, model_names, random_twin
from igpt_eval.predictions import load_predictions
from igpt_eval.probes import Features
from igpt_eval.probes.concat import check_concat, concat_site, concat_span, probe_concat
from igpt_eval.probes.paired import paired_rows
from igpt_eval.probes.pixels import native_pixel_features
from igpt_eval.reporting.tables import comparison_table, table_markdown
from igpt_eval.reporting.words import describe_depth_curve, random_words
from igpt_eval.results import load_results, summary, to_frame
from igpt_eval.studies.probe import probe_model
from igpt_eval.studies.settings import ProbeSettings
from tests.test_paired import probe as synthetic_probe


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ar_run(tiny_pair, tmp_path_factory):
    """The tiny AR model as a trained run would leave it: ``run.json`` names its dataset
    and its training seed (3), which the random-weights twin starts from; and a grey
    12×12 copy of its dataset (the model reads it resized to 8×8)."""
    from PIL import Image

    _, ar, _, npz = tiny_pair
    root = tmp_path_factory.mktemp("controls")
    with np.load(npz) as z:
        big = {k: z[k] for k in z.files}
    for k in ("images", "test_images"):  # 8x8 → 12x12, bicubic: the same patterns, larger
        big[k] = np.stack(
            [np.asarray(Image.fromarray(im[..., 0]).resize((12, 12)))[..., None] for im in big[k]]
        )
    np.savez(root / "big.npz", **big)
    run = shutil.copytree(ar, root / "tiny-ar")
    run_json = {"dataset": f"npz:{root / 'big.npz'}", "train_config": {"seed": 3}}
    (run / "run.json").write_text(json.dumps(run_json))
    return root, run


def _probe(run, root, cache_dir, **settings):
    data = DataSource(token_cache=root / "tokens")
    return probe_model(run, data, ProbeSettings(**settings), cache_dir=cache_dir)


# --------------------------------------------------------------------------- names
def test_control_names():
    assert random_twin("fmnist-ar") == "fmnist-ar (random weights)"
    names = ["a", "pixels", "a (random weights)", "b (random weights)", "pixels_native"]
    # A twin is a control next to its model; alone (probed by itself), it is the model.
    assert model_names(names) == ["a", "b (random weights)"]


# --------------------------------------------------------------------------- random weights
def test_random_twin_features_are_the_initialisation(ar_run):
    root, run = ar_run
    df, pred = _probe(run, root, cache_dir=root / "acts-random", random_weights=True)
    twin = random_twin(resolve_model(run).label)  # the label: name and weights hash
    assert set(df.model) == {twin, "pixels", PIXELS_NATIVE}
    # The kind is a column the rows carry, not a suffix to parse back.
    kinds = df.drop_duplicates("model").set_index("model").model_kind
    assert kinds.to_dict() == {twin: "random", "pixels": "control", PIXELS_NATIVE: "control"}
    assert all(k.startswith(f"{twin}/") for k in pred.pred if not k.startswith("pixels"))
    test = ActivationCache.open(root / "acts-random/test")
    assert "random weights, seed 3" in test.manifest.model
    # The cache holds IGPT.initialised(config, run seed)'s features of the test images...
    from igpt_eval.data import load_dataset

    trained = load_model(run)
    images = load_dataset(f"npz:{root / 'big.npz'}", "test", n_px=8).images
    from igpt_eval.model.checkpoint import load_palette

    tokens = load_palette(run).encode(images)
    init = IGPT.initialised(trained.config, 3).eval()
    with torch.no_grad():
        want, other = init.features(tokens).numpy(), trained.features(tokens).numpy()
    for i, layer in enumerate(test.layers):
        np.testing.assert_allclose(test[layer], want[i], rtol=1e-5, atol=1e-5)
        # ... not the trained model's
        assert not np.allclose(test[layer], other[i], atol=1e-3)
    # another seed is another network
    with torch.no_grad():
        seed0 = IGPT.initialised(trained.config, 0).eval().features(tokens).numpy()
    assert not np.allclose(test[test.layers[-1]], seed0[-1], atol=1e-3)


def test_best_vs_random_sign_and_twin_as_a_control():
    """Model A carries the class in layer 0; its twin is noise in every layer: A beats it."""
    rows_a, pred = synthetic_probe("A")
    rows_t, pred_t = synthetic_probe(random_twin("A"), informative=False)
    pred.update(pred_t)
    results = to_frame(rows_a + rows_t)
    diffs = to_frame(paired_rows(results, pred, n_boot=2000))
    r = diffs.set_index("contrast").loc["best_vs_random"]
    assert (r.model, r.vs_model, r.layer) == ("A", random_twin("A"), 0)
    assert r.value > 0.3 and r.ci_low > 0 and r.p_value < 1e-6
    assert set(diffs.model) == {"A"}  # the twin is a control: no contrasts of its own
    table = comparison_table(pd.concat([results, diffs])).set_index("model")
    assert list(table.index) == ["A"]
    assert table.loc["A", "random_gap_pp"] == pytest.approx(100 * r.value)
    assert table.loc["A", "random_ci_low_pp"] == pytest.approx(100 * r.ci_low)
    assert "best − random (pp)" in table_markdown(table.reset_index())
    assert random_words(diffs).startswith("It beats its random-weights twin")
    # The other way round (the twin informative): "falls below", with the sign flipped.
    rows_b, pred_b = synthetic_probe("B", informative=False)
    rows_bt, pred_bt = synthetic_probe(random_twin("B"))
    pred_b.update(pred_bt)
    back = to_frame(paired_rows(to_frame(rows_b + rows_bt), pred_b, n_boot=2000))
    rb = back.set_index("contrast").loc["best_vs_random"]
    assert rb.value < -0.3 and rb.ci_high < 0
    assert random_words(back).startswith("It falls below its random-weights twin")
    # Probed alone, the twin is the model: it gets the model's contrasts.
    alone = to_frame(paired_rows(to_frame(rows_t), pred_t, n_boot=200))
    assert set(alone.contrast) == {"best_vs_last"} and set(alone.model) == {random_twin("A")}


def test_random_words_not_distinguishable():
    d = pd.DataFrame(
        [dict(contrast="best_vs_random", value=0.02, ci_low=-0.01, ci_high=0.05, p_value=0.2,
              layer=3, vs_layer=1, model="m", probe="lbfgs")]
    )  # fmt: skip
    words = random_words(d)
    assert "does not beat" in words and "not distinguishable" in words and "layer 1" in words
    s = pd.DataFrame(dict(layer=range(4), test_acc=[0.5, 0.6, 0.7, 0.65]))
    s["ci_low"], s["ci_high"], s["best"], s["last"] = 0.4, 0.8, s.layer == 2, s.layer == 3
    assert words in describe_depth_curve("m", s, None, d)


# --------------------------------------------------------------------------- native pixels
def test_native_pixel_features():
    images = np.array([[[[0], [255]], [[127], [51]]]], np.uint8)  # one 2x2 grey image
    X = native_pixel_features(images)
    assert X.shape == (1, 4) and X.dtype == np.float32
    np.testing.assert_allclose(X[0], np.array([0, 255, 127, 51]) / 127.5 - 1, atol=1e-7)


def test_native_pixels_pair_with_the_model(ar_run):
    root, run = ar_run
    df, pred = _probe(run, root, cache_dir=root / "acts", native_pixels=True)
    test = df[(df.split == "test") & (df.metric == "accuracy")].set_index("probe")
    # 12x12 grey at native resolution; the palette-quantised image the model reads is 8x8.
    assert test.loc[PIXELS_NATIVE, "n_features"] == 144
    assert test.loc["pixels", "n_features"] == 64
    assert (test.n_eval == 32).all() and (test.n_train == 96).all()
    key = f"{PIXELS_NATIVE}/{PIXELS_NATIVE}/{PIXELS_NATIVE}"
    assert pred.correct(key).mean() == pytest.approx(test.loc[PIXELS_NATIVE, "value"])
    diffs = df[df.metric == "accuracy_diff"].set_index("contrast")
    assert diffs.loc["best_vs_pixels_native", "vs_model"] == PIXELS_NATIVE
    assert summary(df).layer.tolist() == [0, 1, 2, 3]  # the controls are not layers
    lines = paired_lines(df[df.probe == "lbfgs"])
    assert any("raw pixels at native resolution" in x for x in lines)


def test_pixel_controls_use_the_capped_samples(ar_run):
    """With val/test capped (as ``track`` does), the pixel controls are scored on the same
    sampled test images as the caches, so their predictions still pair."""
    root, run = ar_run
    df, pred = _probe(
        run, root, cache_dir=root / "acts-capped", native_pixels=True, val_size=8, test_size=12
    )
    test = df[(df.split == "test") & (df.metric == "accuracy")]
    assert set(test.n_eval) == {12} and len(pred.labels) == 12
    assert np.bincount(pred.labels).tolist() == [3, 3, 3, 3]  # stratified
    assert set(df[df.metric == "accuracy_diff"].n_eval) == {12}


# --------------------------------------------------------------------------- multi-layer
@pytest.mark.parametrize(
    "centre, k, span",
    [(4, 5, [2, 3, 4, 5, 6]), (0, 5, [0, 1, 2, 3, 4]), (1, 5, [0, 1, 2, 3, 4]),
     (8, 5, [4, 5, 6, 7, 8]), (7, 3, [6, 7, 8]), (3, 1, [3]), (5, 9, list(range(9)))],
)  # fmt: skip
def test_concat_span_is_centred_and_clipped(centre, k, span):
    assert concat_span(list(range(9)), centre, k) == span


def test_concat_site():
    assert concat_site([2, 3, 4], ["blocks.2.ln_1", "b3", "blocks.4.ln_1"]) == (
        "concat(blocks.2.ln_1..blocks.4.ln_1)"
    )
    assert concat_site([0, 4, 8], ["blocks.0.ln_1", "blocks.4.ln_1", "ln_f"]) == (
        "concat(blocks.0.ln_1+blocks.4.ln_1+ln_f)"
    )


@pytest.mark.parametrize(
    "k, match",
    [(0, "positive, odd"), (-3, "positive, odd"), (2, "odd number"), (11, "only 9 are probed"),
     ("3", "positive, odd"), (True, "positive, odd")],
)  # fmt: skip
def test_concat_bad_k(k, match):
    with pytest.raises(IGPTError, match=match):
        check_concat(k, 9)
    check_concat(None, 9)  # off


def test_concat_features_are_the_span(monkeypatch):
    """The concatenated features are the span's layers side by side, K·d wide."""
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    feats = {
        s: Features(rng.normal(size=(5, 60, 4)).astype(np.float32), y)
        for s in ("train", "val", "test")
    }
    seen = {}

    def spy(train, val, test, layers, **kw):
        seen.update(X=train.X, layers=layers, sites=kw["sites"], probe=kw["probe"])
        return [dict(split="test", layer=layers[0])], None

    monkeypatch.setattr("igpt_eval.probes.concat.probe_lbfgs", spy)
    rows, _ = probe_concat(feats, [0, 1, 2, 3, 4], list("abcde"), 4, 3, meta={})
    assert seen["X"].shape == (1, 60, 12) and seen["layers"] == [4] and seen["probe"] == CONCAT
    want = np.concatenate([feats["train"].X[i] for i in (2, 3, 4)], axis=1)
    np.testing.assert_array_equal(seen["X"][0], want)
    assert seen["sites"] == ["concat(c..e)"] and rows[0]["concat_layers"] == 3


def test_concat_probe_on_the_model(ar_run):
    root, run = ar_run
    df, pred = _probe(run, root, cache_dir=root / "acts", pixels=False, concat_layers=3)
    best = summary(df)
    b = int(best[best.best].layer.iloc[0])
    cat = df[(df.probe == CONCAT) & (df.metric == "accuracy")]
    span = concat_span([0, 1, 2, 3], b, 3)
    sites = dict(zip(best.layer, best.site, strict=True))
    assert set(cat.layer) == {b} and set(cat.concat_layers) == {3}
    assert set(cat.site) == {concat_site(span, [sites[x] for x in span])}
    assert set(cat.n_features) == {3 * 32}  # K · d
    test = cat[cat.split == "test"].iloc[0]
    assert pred.correct(f"{resolve_model(run).label}/{CONCAT}/{test.site}").mean() == pytest.approx(
        test.value
    )
    d = df[df.metric == "accuracy_diff"].set_index("contrast").loc["concat_vs_best"]
    assert (d.probe, d.vs_probe, d.layer, d.vs_layer) == (CONCAT, "lbfgs", b, b)
    assert d.value == pytest.approx(test.value - best[best.best].test_acc.iloc[0])
    # K = 1 is the best layer alone: the same protocol on the same features.
    one, _ = _probe(run, root, cache_dir=root / "acts", pixels=False, concat_layers=1)
    c1 = one[(one.probe == CONCAT) & (one.split == "test") & (one.metric == "accuracy")]
    assert c1.value.iloc[0] == pytest.approx(best[best.best].test_acc.iloc[0])


# --------------------------------------------------------------------------- command line
def probe_cli(root, run, *extra):
    return [
        "probe", "--model", str(run), "--cache", str(root / "cli-acts"),
        "--out", str(root / "cli-out"), "--no-progress", *extra,
    ]  # fmt: skip


def test_probe_cli_controls(ar_run, capsys, monkeypatch):
    root, run = ar_run
    monkeypatch.chdir(root)
    monkeypatch.setenv("IGPT_EVAL_CACHE", str(root / "runs/cache"))  # the fixture's tokens
    extra = ["--random-weights", "--native-pixels", "--concat-layers", "3"]
    assert main(probe_cli(root, run, *extra)) == 0
    out = capsys.readouterr().out
    df = load_results(root / "cli-out")
    twin = random_twin(resolve_model(run).label)
    assert set(df.model) == {twin, "pixels", PIXELS_NATIVE}
    assert set(df.probe) == {"lbfgs", CONCAT, "pixels", PIXELS_NATIVE}
    assert f"of {twin} (ar)" in out and "multi-layer probe concat(" in out
    lines = out.splitlines()
    assert any(
        x.startswith("best (layer") and "raw pixels at native resolution" in x for x in lines
    )
    assert any(x.startswith("concat(") and "− best (layer" in x for x in lines)
    contrasts = set(df[df.metric == "accuracy_diff"].contrast)
    assert contrasts == {
        "best_vs_last",
        "best_vs_pixels",
        "best_vs_pixels_native",
        "concat_vs_best",
    }
    assert len(load_predictions(root / "cli-out")) == 4 + 1 + 2


@pytest.mark.parametrize(
    "extra, match",
    [(["--concat-layers", "0"], "positive, odd"), (["--concat-layers", "2"], "odd number"),
     (["--concat-layers", "5"], "only 4 are probed"),
     (["--concat-layers", "3", "--method", "sgd"], "L-BFGS")],
)  # fmt: skip
def test_probe_cli_bad_concat(ar_run, capsys, monkeypatch, extra, match):
    root, run = ar_run
    monkeypatch.chdir(root)
    monkeypatch.setenv("IGPT_EVAL_CACHE", str(root / "runs/cache"))  # the fixture's tokens
    args = probe_cli(root, run, *extra, "--overwrite")  # the refusal under test comes first
    args[args.index("--cache") + 1] = str(root / "never")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("igpt-eval: error:") and match in err[0]
    assert not (root / "never").exists()  # refused before any extraction


def test_compare_cli_flags(tiny_pair, tiny_comparison, capsys, monkeypatch):
    root, ar, bert, npz = tiny_pair
    AR, BERT = (resolve_model(d).label for d in (ar, bert))
    monkeypatch.chdir(root)
    monkeypatch.setenv("IGPT_EVAL_CACHE", str(root / "runs/cache"))  # the fixture's tokens
    args = [
        "compare", "--models", str(ar), str(bert), "--dataset", f"npz:{npz}",
        "--out", str(root / "cli-flags"), "--cache", str(root / "acts"), "--no-progress",
    ]  # fmt: skip
    assert main([*args, "--concat-layers", "4"]) == 2
    assert "odd number" in capsys.readouterr().err
    assert main([*args, "--no-random-control", "--no-native-pixels", "--concat-layers", "3"]) == 0
    out = capsys.readouterr().out
    df = load_results(root / "cli-flags")
    assert set(df.model) == {AR, BERT, "pixels"}  # no twins, no native pixels
    assert set(df.probe) == {"lbfgs", "knn", "pixels", CONCAT}
    diffs = df[df.metric == "accuracy_diff"]
    assert "best_vs_random" not in set(diffs.contrast)
    cat = diffs[diffs.contrast == "concat_vs_best"]
    assert sorted(cat.model) == [AR, BERT]
    assert "multi-layer probe" in out and "random" not in out
    table = pd.read_csv(root / "cli-flags/tables/comparison.csv").set_index("model")
    assert table.loc[AR, "concat_site"].startswith("concat(")
    # The default run (the fixture) probed the twins and the native pixels.
    t = comparison_table(tiny_comparison.results).set_index("model")
    r = tiny_comparison.results
    twin = summary(r[(r.model == random_twin(BERT)) & (r.probe == "lbfgs")])
    assert t.loc[BERT, "random_best_layer"] == twin[twin.best].layer.iloc[0]
    assert t.loc[BERT, "random_acc"] == pytest.approx(twin[twin.best].test_acc.iloc[0])
