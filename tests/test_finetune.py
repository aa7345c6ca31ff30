"""Fine-tuning: the head, the joint loss, early stopping, exact resumption, subsets,
augmentation, the CLI and its bad input."""

import numpy as np
import pytest
import torch

from igpt_eval.cli import main
from igpt_eval.data.palette import Palette
from igpt_eval.data.subsets import (
    Labelled,
    LabelledSplits,
    augment_images,
    labelled_subset,
    lowdata_split,
)
from igpt_eval.errors import IGPTError
from igpt_eval.model import IGPT, load_model, save_model
from igpt_eval.model.config import IGPTConfig
from igpt_eval.results import COLUMNS, load_results
from igpt_eval.train.finetune import FineTuner, with_classifier
from igpt_eval.train.finetune_runs import run_finetune
from igpt_eval.train.settings import FinetuneConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pretrained(objective="ar"):
    torch.manual_seed(0)
    model = IGPT(IGPTConfig.preset("tiny", objective=objective))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model


def labelled(n=48, seed=0):
    """Three classes told apart by their dominant colour band (8x8 px, 16 colours)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 16, (n, 64))
    x[:, :32] = (y * 5)[:, None] + rng.integers(0, 2, (n, 32))
    return Labelled(x.astype(np.uint16), y.astype(np.int64))


def test_head_is_zero_initialised_and_the_body_kept():
    base = pretrained()
    net = with_classifier(base, 3)
    assert net.wclf.weight.shape == (3, 32) and not net.wclf.weight.any()
    assert net.wclf.bias is None
    for k, v in base.state_dict().items():
        assert torch.equal(v, net.state_dict()[k])
    x = torch.randint(0, 16, (4, 64))
    assert not net.classify(x).any()  # uniform predictions at the start


@pytest.mark.parametrize("objective", ["ar", "bert"])
def test_joint_loss_decreases_and_generalises(tmp_path, objective):
    data, held_out = labelled(), labelled(seed=1)  # scored on rows it never trained on
    cfg = FinetuneConfig(steps=40, batch_size=16, lr=3e-3, eval_every=40)
    tuner = FineTuner(with_classifier(pretrained(objective), 3), data, held_out, cfg, tmp_path)
    first = [tuner.train_step() for _ in range(3)]
    for _ in range(34):
        tuner.train_step()
    last = [tuner.train_step() for _ in range(3)]
    mean = lambda rows, k: np.mean([r[k] for r in rows])  # noqa: E731
    assert mean(last, "train_loss") < mean(first, "train_loss") - 0.3
    assert mean(last, "clf_loss") < mean(first, "clf_loss")
    assert all(r["gen_loss"] != "" for r in first)
    acc, _, correct = tuner.evaluate(held_out)
    assert len(correct) == 48 and acc > 0.6  # chance is 1/3


@pytest.mark.parametrize("literal", [False, True])
def test_joint_objective_at_an_inner_layer_on_both_paths(tmp_path, literal):
    """The head on block 1's ln_1 output while the generative loss runs every block: on the
    CPU training path a forward hook on that norm never fired (a KeyError); a site tap does."""
    from igpt_eval.model import ops

    data = labelled()
    cfg = FinetuneConfig(steps=3, batch_size=16, lr=3e-3, layer=1, eval_every=3)
    net = with_classifier(pretrained(), 3)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    tuner = FineTuner(net, data, data, cfg, tmp_path)
    with ops.literal_ops(literal):
        rows = [tuner.train_step() for _ in range(3)]
    assert all(r["gen_loss"] != "" and np.isfinite(r["clf_loss"]) for r in rows)
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert {"wclf.weight", "blocks.2.mlp.fc.weight", "wtet.weight"} <= changed  # L_gen: all


def test_joint_head_features_match_on_both_paths():
    from igpt_eval.model import ops
    from igpt_eval.model.head import pooled_feature
    from igpt_eval.train.finetune import joint_losses

    net = with_classifier(pretrained("bert"), 3).double()
    with torch.no_grad():
        net.wclf.weight.normal_()
    x = torch.from_numpy(labelled(8).tokens.astype(np.int64))
    mask = net.sample_mask(8, 64, torch.Generator().manual_seed(0))
    for layer in (0, 1, 3):  # 3 = n_layer: ln_f of the last residual
        _, fast = joint_losses(net, x, layer, mask)
        with ops.literal_ops():
            _, slow = joint_losses(net, x, layer, mask)
            alone = pooled_feature(net, x, layer, mask)
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(alone, slow, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # the last layer's feature is what IGPT.classify reads
        torch.testing.assert_close(
            net.wclf(pooled_feature(net, x, 3, mask)), net.classify(x, mask), rtol=0, atol=0
        )


def test_clf_only_head_at_a_layer_trains_the_body_below_it(tmp_path):
    data = labelled()
    cfg = FinetuneConfig(steps=20, batch_size=16, lr=3e-3, objective="clf", layer=1, eval_every=20)
    net = with_classifier(pretrained(), 3)
    tuner = FineTuner(net, data, data, cfg, tmp_path)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    rows = [tuner.train_step() for _ in range(3)]  # step 1 moves only the zero head
    assert all(r["gen_loss"] == "" for r in rows)
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    # Block 0 and block 1's first norm feed the head; nothing past them does any work.
    assert {"wclf.weight", "blocks.0.attn.qkv.weight", "blocks.1.ln_1.g", "wte.weight"} <= changed
    assert not {n for n in changed if n.startswith(("blocks.2.", "blocks.1.attn", "wtet"))}


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    data = labelled()
    cfg = FinetuneConfig(steps=100, batch_size=16, eval_every=2, patience=2)
    tuner = FineTuner(with_classifier(pretrained(), 3), data, data, cfg, tmp_path)
    scripted = iter([0.4, 0.9, 0.5, 0.6, 0.95])
    snapshots = {}

    def fake_eval(d, batch_size=256):
        snapshots[tuner.step] = {k: v.clone() for k, v in tuner.model.state_dict().items()}
        return next(scripted), 1.0, np.ones(len(d), bool)

    monkeypatch.setattr(tuner, "evaluate", fake_eval)
    best = tuner.fit()
    assert (best.step, best.acc, best.stopped) == (4, 0.9, True)
    assert tuner.step == 8  # two evaluations without improvement, then stop
    saved = load_model(tmp_path)
    for k, v in snapshots[4].items():
        assert torch.equal(v, saved.state_dict()[k])
    assert len(open(tmp_path / "finetune_log.csv").read().splitlines()) == 1 + 4


@pytest.mark.parametrize(("objective", "augment"), [("ar", True), ("bert", False)])
def test_resume_after_interruption_matches_an_unbroken_run(tmp_path, monkeypatch, objective,
                                                           augment):  # fmt: skip
    rng = np.random.default_rng(1)
    pal = Palette(rng.uniform(-1, 1, (16, 3)).astype(np.float32))
    images = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    d = Labelled(pal.encode(images), np.arange(30) % 3, images if augment else None)
    cfg = FinetuneConfig(steps=8, batch_size=8, eval_every=2, patience=10, augment=augment)
    model = pretrained(objective)
    args = (model, pal, LabelledSplits(d, d, d), cfg)
    ref = run_finetune(*args, tmp_path / "ref")

    real = FineTuner.train_step
    calls = {"n": 0}

    def dying(self):
        calls["n"] += 1
        if calls["n"] == 6:  # after the checkpoint at step 4, during step 6
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(FineTuner, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(*args, tmp_path / "run")
    monkeypatch.setattr(FineTuner, "train_step", real)
    assert (tmp_path / "run/resume/LATEST").read_text().strip() == "step-4"
    with pytest.raises(IGPTError, match="already holds files"):
        run_finetune(*args, tmp_path / "run")
    again = run_finetune(*args, tmp_path / "run", resume=True)
    a, b = load_model(tmp_path / "ref"), load_model(tmp_path / "run")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    np.testing.assert_array_equal(ref.value.to_numpy(float), again.value.to_numpy(float))
    assert (tmp_path / "ref/finetune_log.csv").read_text() != ""
    log = lambda p: (p / "finetune_log.csv").read_text().splitlines()  # noqa: E731
    assert [r.split(",")[:6] for r in log(tmp_path / "ref")] == [
        r.split(",")[:6] for r in log(tmp_path / "run")
    ]


def test_labelled_subset_is_exact_seeded_and_nested():
    y = np.repeat(np.arange(4), [10, 7, 9, 12])
    a = labelled_subset(y, 5, seed=3)
    assert np.array_equal(np.bincount(y[a]), [5, 5, 5, 5])
    assert np.array_equal(a, labelled_subset(y, 5, seed=3))
    assert not np.array_equal(a, labelled_subset(y, 5, seed=4))
    assert set(labelled_subset(y, 2, seed=3)) <= set(a)
    tr, va = lowdata_split(y, 4, seed=0)
    assert not set(tr) & set(va)
    assert np.array_equal(np.bincount(y[va]), [1, 1, 1, 1])
    assert np.array_equal(np.bincount(y[tr]), [3, 3, 3, 3])
    with pytest.raises(IGPTError, match="class 1 has only 7"):
        labelled_subset(y, 8, seed=0)
    with pytest.raises(IGPTError, match="fewer than two classes"):
        labelled_subset(np.zeros(10, int), 2, seed=0)


def test_augmentation_shapes_crops_and_flips():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    out = augment_images(images, torch.Generator().manual_seed(5), pad=4)
    assert out.shape == images.shape and out.dtype == np.uint8
    # Replay the draws and build each image by hand: pad, crop, maybe flip.
    g = torch.Generator().manual_seed(5)
    oy, ox = (torch.randint(0, 9, (64,), generator=g).numpy() for _ in range(2))
    flip = torch.rand(64, generator=g).numpy() < 0.5
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    for i in range(64):
        want = padded[i, oy[i] : oy[i] + 8, ox[i] : ox[i] + 8]
        np.testing.assert_array_equal(out[i], want[:, ::-1] if flip[i] else want)
    assert 10 < flip.sum() < 54
    # Centred crop without flip is the identity; a centred flipped one mirrors the image.
    centre = np.flatnonzero((oy == 4) & (ox == 4))
    for i in centre:
        np.testing.assert_array_equal(out[i], images[i, :, ::-1] if flip[i] else images[i])


# ------------------------------------------------------------------ the command line
@pytest.fixture
def tiny_model(tmp_path):
    pal = Palette(np.random.default_rng(0).uniform(-1, 1, (16, 3)).astype(np.float32))
    return save_model(pretrained(), tmp_path / "model", palette=pal)


def ft_args(tmp_path, model, dataset, *extra):
    return ["finetune", "--model", str(model), "--dataset", dataset, "--out",
            str(tmp_path / "ft"), "--steps", "6", "--eval-every", "3", "--batch-size", "8",
            "--token-cache", str(tmp_path / "tok"), "--no-progress", *extra]  # fmt: skip


def test_finetune_cli_end_to_end(tmp_path, tiny_model, tiny_npz, capsys):
    assert main(ft_args(tmp_path, tiny_model, f"npz:{tiny_npz}", "--labels-per-class", "8")) == 0
    assert "test acc" in capsys.readouterr().out
    df = load_results(tmp_path / "ft/results.parquet")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert set(df.probe) == {"finetune"} and set(df.split) == {"val", "test"}
    assert set(df.labels_per_class) == {8} and (df.n_train == 18).all()
    net = load_model(tmp_path / "ft")
    assert net.config.n_classes == 3 and (tmp_path / "ft/palette.npy").is_file()
    args = ft_args(tmp_path, tiny_model, f"npz:{tiny_npz}", "--resume", "--steps", "9")
    assert main(args) == 2  # without --labels-per-class: other data, not the same run
    assert "another model or data" in capsys.readouterr().err
    assert main([*args, "--labels-per-class", "8"]) == 0  # the budget may grow
    assert load_results(tmp_path / "ft/results.parquet").steps.max() == 9


def test_finetune_epochs_budget(tmp_path, tiny_model, tiny_npz):
    args = ft_args(tmp_path, tiny_model, f"npz:{tiny_npz}", "--labels-per-class", "8")
    i = args.index("--steps")
    args[i : i + 2] = ["--epochs", "1"]
    assert main(args) == 0  # 18 training images at batch 8: 2.25 steps an epoch
    assert load_results(tmp_path / "ft/results.parquet").steps.max() == 2


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("igpt-eval: error:")
    return err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--labels-per-class", "40"], "class 0 has only 18"),
        (["--layer", "4"], "layer 4 is out of range"),
        (["--layer", "-1"], "layer -1 is out of range"),
        (["--objective", "generative"], "invalid choice: 'generative'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_model, tiny_npz, capsys,
                                                  extra, match):  # fmt: skip
    assert main(ft_args(tmp_path, tiny_model, f"npz:{tiny_npz}", *extra)) == 2
    assert match in one_error(capsys)
    assert not (tmp_path / "ft").exists()


def test_dataset_without_labels(tmp_path, tiny_model, capsys):
    images = np.zeros((20, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "nolabels.npz", images=images)
    assert main(ft_args(tmp_path, tiny_model, f"npz:{tmp_path / 'nolabels.npz'}")) == 2
    assert "labels" in one_error(capsys)
    np.savez(tmp_path / "one.npz", images=images, labels=np.zeros(20, int))
    assert main(ft_args(tmp_path, tiny_model, f"npz:{tmp_path / 'one.npz'}")) == 2
    assert "fewer than two classes" in one_error(capsys)
    assert not (tmp_path / "ft").exists()
