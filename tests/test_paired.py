"""Paired statistics: the paired bootstrap and McNemar's exact test on hand-computed cases."""

import numpy as np
import pytest

from igpt_eval.errors import IGPTError
from igpt_eval.names import PIXELS, Metric
from igpt_eval.predictions import Predictions, load_predictions, prediction_key
from igpt_eval.probes import Features, Protocol, probe_lbfgs
from igpt_eval.probes.paired import paired_rows
from igpt_eval.probes.sgd import ArraySource, SGDProtocol, probe_sgd
from igpt_eval.reporting.tables import comparison_table
from igpt_eval.reporting.words import describe_depth_curve, describe_knn
from igpt_eval.results import save_results, to_frame
from igpt_eval.stats import mcnemar_exact, paired_bootstrap, paired_difference
from igpt_eval.studies.probe import summary


def pair(n11, n10, n01, n00):
    """Correctness vectors with the given counts (a right & b right, only a, only b, none)."""
    a = np.repeat([1, 1, 0, 0], [n11, n10, n01, n00]).astype(bool)
    b = np.repeat([1, 0, 1, 0], [n11, n10, n01, n00]).astype(bool)
    return a, b


@pytest.mark.parametrize(
    "n10, n01, p",
    [
        (2, 0, 0.5),  # 2 · P(X = 2 | 2, 1/2)
        (5, 0, 0.0625),  # 2 / 2^5
        (8, 2, 112 / 1024),  # 2 · P(X <= 2 | 10, 1/2) = 2 (1 + 10 + 45) / 1024
        (3, 3, 1.0),
    ],
)
def test_mcnemar_exact_by_hand(n10, n01, p):
    a, b = pair(7, n10, n01, 4)
    assert mcnemar_exact(a, b) == pytest.approx(p)
    r = paired_difference(a, b)
    assert (r.n, r.n10, r.n01) == (len(a), n10, n01)
    assert r.diff == pytest.approx((n10 - n01) / len(a))
    assert r.p_value == pytest.approx(p)


def test_identical_predictors():
    a, _ = pair(30, 5, 0, 10)
    r = paired_difference(a, a)
    assert (r.diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert r.n01 == r.n10 == 0


def test_superset_is_above_zero():
    # a is right wherever b is, and on 30 of 1,000 more examples: a real difference even
    # though the marginal 95% intervals (about ±2.5 points each) overlap.
    a, b = pair(800, 30, 0, 170)
    diff, lo, hi = paired_bootstrap(a, b)
    assert diff == pytest.approx(0.03)
    assert 0 < lo < diff < hi
    assert mcnemar_exact(a, b) < 1e-8


def test_symmetric_and_seeded():
    a, b = pair(400, 37, 21, 142)
    r, s = paired_difference(a, b, seed=3), paired_difference(b, a, seed=3)
    assert s.diff == -r.diff and (s.n10, s.n01) == (r.n01, r.n10)
    assert s.ci_low == pytest.approx(-r.ci_high) and s.ci_high == pytest.approx(-r.ci_low)
    assert s.p_value == r.p_value
    assert paired_difference(a, b, seed=3) == r  # same seed, same interval


def test_equals_resampling_the_same_indices():
    """The multinomial shortcut has the distribution of resampling the same test indices
    for both predictors: compare with the literal bootstrap."""
    a, b = pair(300, 40, 25, 135)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(a), size=(4000, len(a)))
    literal = a[idx].mean(1) - b[idx].mean(1)
    want = np.quantile(literal, [0.025, 0.975])
    _, lo, hi = paired_bootstrap(a, b, n_boot=20_000)
    np.testing.assert_allclose([lo, hi], want, atol=0.004)


def test_paired_bad_input():
    with pytest.raises(IGPTError, match="same examples"):
        paired_bootstrap(np.ones(3, bool), np.ones(4, bool))
    assert np.isnan(paired_bootstrap(np.ones(0, bool), np.ones(0, bool))[0])


# --------------------------------------------------------------------------- predictions
def layers_first_informative(n, seed):
    """Features of two layers: layer 0 carries the class, layer 1 is noise (3 classes)."""
    from tests.test_probes import synthetic

    f = synthetic(n, seed)
    return Features(f.X[::-1].copy(), f.y)


def probe(model="m", informative=True, probe_name="lbfgs"):
    """probe_lbfgs rows and predictions of ``model`` on the synthetic problem."""
    tr, va, te = (layers_first_informative(n, s) for n, s in ((450, 0), (150, 1), (300, 2)))
    if not informative:  # both layers noise
        tr, va, te = (Features(f.X[[1, 1]], f.y) for f in (tr, va, te))
    return probe_lbfgs(
        tr,
        va,
        te,
        [0, 1],
        meta=dict(model=model, objective="ar", dataset="syn", site_kind="ln_1"),
        sites=["blocks.0.ln_1", "ln_f"],
        probe=probe_name,
        protocol=Protocol(n_boot=1000),
    )


def test_lbfgs_predictions_round_trip(tmp_path):
    rows, pred = probe()
    df = to_frame(rows)
    save_results(df, tmp_path, predictions=pred)
    back = load_predictions(tmp_path)
    assert set(back.pred) == {"m/lbfgs/blocks.0.ln_1", "m/lbfgs/ln_f"}
    assert back.labels.dtype == np.uint8 and back.pred["m/lbfgs/ln_f"].dtype == np.uint8
    np.testing.assert_array_equal(back.labels, pred.labels)
    test = df[(df.split == "test") & (df.metric == "accuracy")]
    for r in test.itertuples():
        key = prediction_key(r.model, r.probe, r.site)
        np.testing.assert_array_equal(back.pred[key], pred.pred[key])
        assert back.correct(key).mean() == pytest.approx(r.value)  # the row's accuracy
    assert load_predictions(tmp_path / "nowhere") is None  # older results: no file


def test_lbfgs_predictions_are_the_probes():
    """The stored predictions are what a probe fitted by hand at the chosen C predicts."""
    from igpt_eval.probes import LogisticProbe

    rows, pred = probe()
    tr, va, te = (layers_first_informative(n, s) for n, s in ((450, 0), (150, 1), (300, 2)))
    chosen = to_frame(rows).query("split == 'test' and metric == 'accuracy' and layer == 0")
    X = np.concatenate([tr.X[0], va.X[0]])
    mu, sd = tr.X[0].mean(0), tr.X[0].std(0) + 1e-6  # the protocol standardises on train
    p = LogisticProbe(C=float(chosen.C.iloc[0]), tol=1e-8, max_iter=5000)
    p.fit((X - mu) / sd, np.concatenate([tr.y, va.y]))
    agree = p.predict((te.X[0] - mu) / sd) == pred.pred["m/lbfgs/blocks.0.ln_1"]
    assert agree.mean() >= 0.98


def test_sgd_predictions_match_its_rows():
    src = {
        k: ArraySource(f.X, f.y, [0, 1])
        for k, f in zip(
            ("train", "val", "test"),
            (layers_first_informative(n, s) for n, s in ((450, 0), (150, 1), (300, 2))),
            strict=True,
        )
    }
    rows, pred = probe_sgd(
        src, [0, 1], meta=dict(model="m"), sites=["a", "b"], protocol=SGDProtocol(epochs=3)
    )
    test = to_frame(rows).query("split == 'test'").set_index("site")
    for site in ("a", "b"):
        assert pred.correct(f"m/sgd/{site}").mean() == pytest.approx(test.value[site])
    np.testing.assert_array_equal(pred.labels, src["test"].labels)


def test_predictions_refuse_other_test_images():
    p = Predictions()
    p.add("a/lbfgs/x", [0, 1, 2], [0, 1, 1])
    with pytest.raises(IGPTError, match="other images"):
        p.add("b/lbfgs/x", [0, 1, 2], [1, 1, 1])
    with pytest.raises(IGPTError, match="predictions for"):
        p.add("c/lbfgs/x", [0, 1], [0, 1, 1])


# --------------------------------------------------------------------------- difference rows
def test_difference_rows_signs():
    """Layer 0 informative, layer 1 noise; pixels = noise; model B = noise everywhere."""
    rows_a, pred = probe("A")
    rows_b, pred_b = probe("B", informative=False)
    rows_px, pred_px = probe(PIXELS, informative=False, probe_name=PIXELS)
    rows_px = [r for r in rows_px if r["layer"] == 0]  # one "layer", as the real baseline
    pred.update(pred_b).update(pred_px)
    results = to_frame(rows_a + rows_b + rows_px)
    diffs = to_frame(paired_rows(results, pred, n_boot=2000)).set_index(["model", "contrast"])
    assert set(diffs.metric) == {Metric.DIFF} and set(diffs.split) == {"test"}

    last = diffs.loc[("A", "best_vs_last")]
    assert (last.layer, last.vs_layer, last.vs_model) == (0, 1, "A")
    assert last.value > 0.3 and last.ci_low > 0 and last.p_value < 1e-6
    px = diffs.loc[("A", "best_vs_pixels")]
    assert (px.vs_model, px.vs_probe, px.vs_site) == (PIXELS, PIXELS, "blocks.0.ln_1")
    assert px.ci_low > 0
    ab = diffs.loc[("A", "best_vs_best")]
    assert ab.vs_model == "B" and ab.value > 0.3 and ab.ci_low > 0
    # Noise against noise: no difference is claimed.
    noise = diffs.loc[("B", "best_vs_pixels")]
    assert noise.ci_low < 0 < noise.ci_high or noise.value == 0
    # The value is the difference of the two test accuracies in the rows.
    acc = results.query("split == 'test' and metric == 'accuracy'").set_index(["model", "layer"])
    assert last.value == pytest.approx(acc.value[("A", 0)] - acc.value[("A", 1)])
    assert last.n10 - last.n01 == round(last.value * last.n_eval)
    assert paired_rows(results, None) == []  # results without predictions: no rows


def test_best_is_chosen_on_validation_not_test():
    """A constructed table where validation picks layer 1 and test peaks at layer 2: every
    "best" follows validation."""
    rows = []
    val, test = [0.70, 0.90, 0.85, 0.60], [0.70, 0.80, 0.88, 0.60]
    for layer in range(4):
        common = dict(model="m", probe="lbfgs", objective="ar", dataset="d", layer=layer)
        common.update(site=f"s{layer}", metric="accuracy", C=1.0, n_iter=5, converged=True)
        rows.append(dict(common, split="val", value=val[layer], selected=True))
        rows.append(
            dict(common, split="test", value=test[layer], ci_low=0.5, ci_high=0.9, selected=True)
        )
        knn = dict(common, probe="knn", C=np.nan, selected=True)
        rows.append(dict(knn, split="val", value=val[layer] - 0.1))
        rows.append(dict(knn, split="test", value=test[layer] - 0.1, ci_low=0.4, ci_high=0.8))
    df = to_frame(rows)
    n = 100
    labels = np.zeros(n, int)
    pred = Predictions()
    for layer, acc in enumerate(test):
        for p in ("lbfgs", "knn"):
            right = int(round((acc - (p == "knn") * 0.1) * n))
            pred.add(f"m/{p}/s{layer}", np.r_[np.zeros(right), np.ones(n - right)], labels)
    diffs = to_frame(paired_rows(df, pred, n_boot=500))
    assert set(diffs.layer) == {1} and set(diffs.vs_layer) == {3}  # best on val, last
    table = comparison_table(df).set_index("model")
    assert table.loc["m", "best_layer"] == 1 and table.loc["m", "knn_best_layer"] == 1
    assert "peak_test_layer" not in table
    assert table.loc["m", "knn_best_acc"] == pytest.approx(0.70)
    text = describe_depth_curve("m", summary(df[df.probe == "lbfgs"]), None)
    assert "layer 1 of 3" in text and "layer 2" not in text  # the test maximum is not named
    knn = " ".join(describe_knn(df))
    assert "chosen on validation: layer 1" in knn and "layer 2" not in knn
