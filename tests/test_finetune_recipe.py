"""The fine-tuning recipe: the standardised head folded into one checkpoint, the
head at an inner layer in the saved config, the probe initialisation, warm-up, the
learning-rate sweep, and their bad input."""

import numpy as np
import pandas as pd
import pytest
import torch

from igpt_eval.cli import main
from igpt_eval.data.palette import Palette
from igpt_eval.data.subsets import LabelledSplits
from igpt_eval.errors import IGPTError
from igpt_eval.io import file_hash
from igpt_eval.model import IGPT, load_model, save_model
from igpt_eval.model.checkpoint import WEIGHTS
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.head import feature_scale, fold_standardisation, pooled_feature
from igpt_eval.model.sources import resolve_model
from igpt_eval.probes.logistic import LogisticProbe, probe_head
from igpt_eval.results import load_results, probe_choice, save_results, to_frame
from igpt_eval.train.finetune import FineTuner, with_classifier
from igpt_eval.train.finetune_runs import LRSweep, finetune_lr_sweep, run_finetune
from igpt_eval.train.runs import walk_rates
from igpt_eval.train.settings import FinetuneConfig
from tests.test_finetune import ft_args, labelled, pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ pieces
def test_feature_scale_floors_near_constant_dimensions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 500, 4)) * [1.0, 0.5, 1e-7, 0.0]
    mu, sd = feature_scale(x)
    assert mu.shape == sd.shape == (2, 1, 4)
    top = x.std(-2).max(-1)
    np.testing.assert_allclose(sd[:, 0, 1], x[:, :, 1].std(-1))  # unchanged above the floor
    np.testing.assert_allclose(sd[:, 0, 2], 1e-3 * top)  # floored, not blown up to 1
    np.testing.assert_allclose(sd[:, 0, 3], 1e-3 * top)
    _, sd0 = feature_scale(np.zeros((10, 3)))
    assert (sd0 == 1).all()  # an all-constant layer: no division by zero


def test_folded_head_equals_the_standardised_one():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(3, 5, generator=g), torch.randn(3, generator=g)
    mu, sd = torch.randn(5, generator=g), torch.rand(5, generator=g) + 0.1
    x = torch.randn(7, 5, generator=g)
    w2, b2 = fold_standardisation(W, b, mu, sd)
    torch.testing.assert_close(x @ w2.T + b2, ((x - mu) / sd) @ W.T + b)


def test_head_layer_is_in_the_config_and_classify_reads_it():
    net = with_classifier(pretrained(), 3, layer=1, bias=True)
    assert (net.config.clf_layer, net.config.head_layer, net.config.clf_bias) == (1, 1, True)
    with torch.no_grad():
        net.wclf.weight.normal_()
        net.wclf.bias.normal_()
    x = torch.from_numpy(labelled(6).tokens.astype(np.int64))
    want = net.wclf(pooled_feature(net, x, 1))
    torch.testing.assert_close(net.classify(x), want, rtol=0, atol=0)
    assert with_classifier(pretrained(), 3, layer=3).config.clf_layer == -1  # 3 = ln_f
    with pytest.raises(IGPTError, match="clf_layer"):
        IGPTConfig.preset("tiny", n_classes=3, clf_layer=4)


def test_walk_rates_stops_once_worse_and_skips_divergence():
    scores = {1: float("inf"), 2: 0.5, 3: 0.3, 4: 0.4, 5: 0.1}
    tried, best = walk_rates([1, 2, 3, 4, 5], scores.__getitem__)
    assert [lr for lr, _ in tried] == [1, 2, 3, 4] and best == 3
    with pytest.raises(IGPTError, match="diverged"):
        walk_rates([1, 2], lambda lr: float("inf"))


# ------------------------------------------------------------------ the trainer
@pytest.mark.parametrize("layer", [None, 1])
def test_saved_classifier_is_one_checkpoint(tmp_path, layer):
    """The head trains on standardised features; the saved checkpoint folds that in, and
    IGPT.classify on it (no other file) reproduces the run's predictions."""
    data, held = labelled(), labelled(seed=1)
    cfg = FinetuneConfig(steps=12, batch_size=16, lr=3e-3, eval_every=4, layer=layer)
    df = run_finetune(pretrained(), None, LabelledSplits(data, held, held), cfg, tmp_path)
    saved = load_model(tmp_path)
    assert saved.config.clf_bias and saved.config.clf_layer == (-1 if layer is None else layer)
    x = torch.from_numpy(held.tokens.astype(np.int64))
    with torch.no_grad():
        pred = saved.eval().classify(x).argmax(1).numpy()
    test_acc = df[(df.split == "test") & (df.metric == "accuracy")].value.iloc[0]
    assert np.mean(pred == held.labels) == pytest.approx(test_acc)
    assert test_acc > 0.6  # chance is 1/3
    n_eval = df[df.metric == "accuracy"].set_index("split").n_eval
    assert n_eval["val"] == len(held) and n_eval["test"] == len(held)


def test_validation_rows_count_the_images_early_stopping_scored(tmp_path):
    data, held = labelled(), labelled(seed=1)
    cfg = FinetuneConfig(steps=4, batch_size=16, eval_every=2, eval_images=20)
    df = run_finetune(pretrained(), None, LabelledSplits(data, held, held), cfg, tmp_path)
    n_eval = df[df.metric == "accuracy"].set_index("split").n_eval
    assert n_eval["val"] == 20 < len(held) == n_eval["test"]


def test_standardisation_statistics_come_from_training_features(tmp_path):
    data = labelled()
    net = with_classifier(pretrained(), 3, bias=True)
    X = FineTuner(net, data, data, FinetuneConfig(), tmp_path).features(data).astype(np.float64)
    for n in (48, 30):  # every training image, then a seeded sample of 30
        tuner = FineTuner(net, data, data, FinetuneConfig(scale_images=n), tmp_path)
        tuner.prepare()
        mu, sd = (a.double().numpy() for a in tuner.scale)
        if n == 48:
            np.testing.assert_allclose(mu, X.mean(0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(sd, X.std(0), rtol=1e-4)
        else:
            assert not np.allclose(mu, X.mean(0), rtol=1e-5, atol=1e-6)
            assert np.abs(mu - X.mean(0)).max() < 4 * X.std(0).max() / np.sqrt(30)


def test_probe_initialisation_starts_at_the_probe(tmp_path):
    data = labelled(90)
    cfg = FinetuneConfig(steps=1, batch_size=16, init_C=1.0, scale_images=90)
    net = with_classifier(pretrained(), 3, bias=True)
    tuner = FineTuner(net, data, data, cfg, tmp_path, fit_head=probe_head)
    tuner.prepare()
    X = tuner.features(data).astype(np.float64)
    mu, sd = (a.double().numpy() for a in tuner.scale)
    ref = LogisticProbe(C=1.0).fit((X - mu) / sd, data.labels)
    np.testing.assert_allclose(net.wclf.weight.detach().numpy(), ref.coef_, atol=2e-3)
    acc, _, _ = tuner.evaluate(data)
    assert acc == pytest.approx(ref.score((X - mu) / sd, data.labels))
    assert acc > 0.9  # the probe, before a single step
    with pytest.raises(IGPTError, match="fit_head"):
        FineTuner(net, data, data, cfg, tmp_path)


def test_probe_initialisation_uses_the_probes_sample_size(tmp_path):
    data = labelled(90)
    seen = []

    def fit_head(Z, y, C, K):
        seen.append((len(Z), C))
        return probe_head(Z, y, C, K)

    for init_n, want in ((60, 60), (20, 30)):  # at least init_n images, at least scale_images
        cfg = FinetuneConfig(steps=1, init_C=1.0, init_n=init_n, scale_images=30)
        net = with_classifier(pretrained(), 3, bias=True)
        FineTuner(net, data, data, cfg, tmp_path, fit_head=fit_head).prepare()
        assert seen[-1] == (want, pytest.approx(init_n / want))


def test_warm_up_ramps_the_rate(tmp_path):
    data = labelled()
    cfg = FinetuneConfig(steps=10, batch_size=16, lr=1e-3, warmup_steps=4)
    tuner = FineTuner(with_classifier(pretrained(), 3), data, data, cfg, tmp_path)
    seen = []
    for _ in range(6):
        tuner.train_step()
        seen.append(tuner.opt.param_groups[0]["lr"])
    np.testing.assert_allclose(seen, [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_lr_sweep_keeps_the_best_validation_accuracy(tmp_path):
    data, held = labelled(), labelled(seed=1)
    cfg = FinetuneConfig(steps=8, batch_size=16, lr=1e-2, eval_every=4)
    splits, rates = LabelledSplits(data, held, held), LRSweep(runs=3, steps=4)
    df = finetune_lr_sweep(pretrained(), None, splits, cfg, tmp_path, rates)
    sweep = pd.read_csv(tmp_path / "lr_sweep.csv")
    assert 2 <= len(sweep) <= 3 and list(sweep.lr[:2]) == [0.01, 0.003]
    for lr in sweep.lr:  # the sweep's runs are scored on validation only: test is the full run's
        run = pd.read_parquet(tmp_path / "sweep" / f"lr-{lr:g}" / "results.parquet")
        assert set(run.split) == {"val"}
        assert not (tmp_path / "sweep" / f"lr-{lr:g}" / "predictions.npz").exists()
    assert "test" in set(df.split)
    best = sweep[sweep.best]
    assert len(best) == 1 and best.val_acc.iloc[0] == sweep.val_acc.max()
    assert df.lr.iloc[0] == best.lr.iloc[0] and df.steps.max() == 8
    for lr in sweep.lr:
        assert (tmp_path / f"sweep/lr-{lr:g}/results.parquet").is_file()
    again = finetune_lr_sweep(pretrained(), None, splits, cfg, tmp_path, rates, resume=True)
    np.testing.assert_array_equal(again.value.to_numpy(float), df.value.to_numpy(float))


# ------------------------------------------------------------------ probe results
def fake_probe_results(model: str, weights_hash: str | None, n_train=40) -> pd.DataFrame:
    rows = []
    for layer, (va, C) in enumerate([(0.5, 10.0), (0.8, 0.3), (0.7, 1.0), (0.6, 1.0)]):
        common = dict(model=model, probe="lbfgs", layer=layer, site=f"l{layer}", C=C,
                      metric="accuracy", weights_hash=weights_hash, n_train=n_train)  # fmt: skip
        rows.append(dict(common, split="val", value=va, selected=True))
        rows.append(dict(common, split="test", value=va - 0.01, selected=True))
    return to_frame(rows)


def test_probe_choice_takes_the_validation_layer_and_refuses_other_weights():
    df = fake_probe_results("m", "abc")
    assert probe_choice(df, "m", "abc") == (1, 0.3)
    assert probe_choice(df, "m", "abc", layer=2) == (2, 1.0)
    with pytest.raises(IGPTError, match="other weights"):
        probe_choice(df, "m", "xyz")
    with pytest.raises(IGPTError, match="no L-BFGS rows for model 'n'"):
        probe_choice(df, "n")
    assert probe_choice(fake_probe_results("m", None), "m", "xyz") == (1, 0.3)  # old files


@pytest.fixture
def saved(tmp_path):
    """The tiny pretrained model saved as a checkpoint folder named ``model``."""
    pal = Palette(np.random.default_rng(0).uniform(-1, 1, (16, 3)).astype(np.float32))
    return save_model(pretrained(), tmp_path / "model", palette=pal)


def test_cli_init_from_probe_and_lr_sweep(tmp_path, saved, tiny_npz, capsys):
    good = tmp_path / "probe"
    label = resolve_model(saved).label  # what probe results call the model
    save_results(fake_probe_results(label, file_hash(saved / WEIGHTS)), good)
    args = ft_args(tmp_path, saved, f"npz:{tiny_npz}", "--lr-sweep", "2", "--sweep-steps",
                   "3", "--init-from-probe", str(good / "results.parquet"))  # fmt: skip
    assert main(args) == 0
    df = load_results(tmp_path / "ft/results.parquet")
    assert set(df.layer) == {1} and (df.C > 0).all()  # the probe's layer, its (rescaled) C
    assert load_model(tmp_path / "ft").config.clf_layer == 1
    assert len(pd.read_csv(tmp_path / "ft/lr_sweep.csv")) >= 1
    capsys.readouterr()
    # The classifier's card: read from the run's own files, the command as typed.
    assert main(["model-card", "--model", str(tmp_path / "ft")]) == 0
    card = (tmp_path / "ft/MODEL_CARD.md").read_text()
    test = df[(df.split == "test") & (df.metric == "accuracy")].iloc[0]
    assert f"| test | {100 * test.value:.2f}% | [{100 * test.ci_low:.2f}," in card
    assert "igpt-eval finetune --model" in card and "--init-from-probe" in card
    assert "at the L2 logistic probe" in card and "### Learning-rate sweep" in card
    assert (tmp_path / "ft/finetune_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["model-card", "--model", str(tmp_path / "ft")]) == 2  # no --overwrite
    assert "already exists" in capsys.readouterr().err


def test_cli_init_from_another_models_probe_is_one_line(tmp_path, saved, tiny_npz, capsys):
    bad = tmp_path / "probe"
    save_results(fake_probe_results("model", "0123456789abcdef"), bad)
    args = ft_args(tmp_path, saved, f"npz:{tiny_npz}", "--init-from-probe",
                   str(bad / "results.parquet"))  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other weights" in err
    assert not (tmp_path / "ft").exists()
    args[args.index(str(bad / "results.parquet"))] = str(tmp_path / "missing.parquet")
    assert main(args) == 2 and "no probe results" in capsys.readouterr().err


def test_cli_from_scratch_control_keeps_its_test_predictions(tmp_path, saved, tiny_npz):
    """--random-init: the same architecture from its initialisation, named as the model's
    random-weights twin; every run keeps its per-example test predictions for paired
    statistics against the probes."""
    from igpt_eval.predictions import load_predictions

    args = ft_args(tmp_path, saved, f"npz:{tiny_npz}", "--random-init", "--objective", "clf")
    assert main(args) == 0
    df = load_results(tmp_path / "ft/results.parquet")
    twin = resolve_model(saved).label + " (random weights)"
    assert set(df.model) == {twin}
    pred = load_predictions(tmp_path / "ft")
    key = f"{twin}/finetune/ln_f"
    test = df[(df.split == "test") & (df.metric == "accuracy")].value.iloc[0]
    assert pred.correct(key).mean() == pytest.approx(test) and len(pred.labels) == 12
    tuned, trained = load_model(tmp_path / "ft").wpe, load_model(saved).wpe
    start = IGPT.initialised(load_model(saved).config, 0).wpe
    assert (tuned - start).abs().max() < 0.01  # 6 Adam steps of 1e-3 from the initialisation
    assert (tuned - trained).abs().max() > 0.1  # far from the trained weights


def test_epochs_become_the_steps_they_take():
    """``epochs`` is resolved against the training set's size once, and what runs (and is
    recorded) is that step budget."""
    cfg = FinetuneConfig(batch_size=8, epochs=2.5)
    resolved = cfg.for_train(100)
    assert resolved.steps == round(2.5 * 100 / 8) and resolved.epochs is None
    assert resolved.for_train(5) == resolved  # a budget already resolved stays as it is
    assert FinetuneConfig(batch_size=32, epochs=3).for_train(10).steps == 3  # batch = the set
    assert FinetuneConfig(steps=7).for_train(1000).steps == 7  # no epochs: the steps given
    with pytest.raises(IGPTError, match="epochs must be positive"):
        FinetuneConfig(epochs=0).validate(2, 1)
