"""Model cards: token baselines, model metrics, figures, the card itself and its commands."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from igpt_eval.analysis import metrics
from igpt_eval.analysis.metrics import model_metrics, token_baselines
from igpt_eval.cli import main
from igpt_eval.data import load_dataset
from igpt_eval.data.palette import Palette
from igpt_eval.model import IGPT, load_model, save_model
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.record import RunRecord
from igpt_eval.reporting.modelcard import write_model_card
from igpt_eval.studies.modelcard import measure_checkpoint
from igpt_eval.train.pretrain import TrainConfig, evaluate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a second thread only contends with
    whatever else the machine runs (10x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_png(path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("igpt-eval: error: "), err
    return err[0]


# --------------------------------------------------------------------------- baselines
def test_baselines_by_hand():
    train = np.array([[0, 1], [1, 1]], dtype=np.uint16)
    test = np.array([[1, 0]], dtype=np.uint16)
    b = token_baselines(train, test, k=2)
    # Smoothed train unigram: (1+1)/(4+2), (3+1)/(4+2).
    assert b["unigram_ce"] == pytest.approx(-(math.log(2 / 6) + math.log(4 / 6)) / 2)
    assert b["test_unigram_entropy"] == pytest.approx(math.log(2))
    assert b["uniform"] == pytest.approx(math.log(2))
    assert b["unigram_accuracy"] == pytest.approx(0.5)  # always colour 1
    # First pixel: the train mode (1) is right; then 1 -> 0 is not a repeat.
    assert b["prev_pixel_accuracy"] == pytest.approx(0.5)
    # Train pairs (0,1), (1,1); smoothed P(0 | 1) = (0+1)/(1+2). First pixel under the unigram.
    assert b["bigram_ce"] == pytest.approx(-(math.log(4 / 6) + math.log(1 / 3)) / 2)


def test_baselines_on_single_colour_images():
    x = np.full((5, 16), 3, dtype=np.uint16)
    b = token_baselines(x, x, k=8)
    assert b["test_unigram_entropy"] == 0.0
    assert b["prev_pixel_accuracy"] == 1.0 and b["unigram_accuracy"] == 1.0
    # Only the add-one smoothing mass is lost: 80 train pixels, 75 pairs after colour 3.
    assert b["unigram_ce"] == pytest.approx(-math.log(81 / 88))
    assert b["bigram_ce"] == pytest.approx(-(75 * math.log(76 / 83) + 5 * math.log(81 / 88)) / 80)
    # Constant images of different colours: every pixel but the first repeats its neighbour.
    y = np.repeat(np.arange(4, dtype=np.uint16)[:, None], 16, axis=1)
    assert token_baselines(x, y, k=8)["prev_pixel_accuracy"] == pytest.approx((4 * 15 + 1) / 64)


def test_baselines_uniform_noise_is_ln_k(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    k = 16
    train = rng.integers(0, k, (2000, 64)).astype(np.uint16)
    np.save(tmp_path / "test.npy", rng.integers(0, k, (1000, 64)).astype(np.uint16))
    test = np.load(tmp_path / "test.npy", mmap_mode="r")  # memmaps are read in chunks
    b = token_baselines(train, test, k)
    for key in ("unigram_ce", "test_unigram_entropy", "bigram_ce"):
        assert b[key] == pytest.approx(math.log(k), abs=0.01), key
    assert b["prev_pixel_accuracy"] == pytest.approx(1 / k, abs=0.01)
    monkeypatch.setattr(metrics, "_CHUNK", 7)  # chunking changes nothing
    assert token_baselines(train, test, k) == pytest.approx(b)


def test_baselines_refuse_ids_outside_the_palette():
    with pytest.raises(ValueError, match="token ids"):
        token_baselines(np.full((2, 4), 9), np.zeros((2, 4), dtype=int), k=4)


# --------------------------------------------------------------------------- model metrics
@pytest.mark.parametrize("objective", ["ar", "bert"])
def test_metrics_of_the_zero_head_are_ln_k(objective):
    torch.manual_seed(0)
    model = IGPT(IGPTConfig.preset("tiny", objective=objective))
    tokens = np.random.default_rng(0).integers(0, 16, (10, 64)).astype(np.uint16)
    m = model_metrics(model, tokens, batch_size=4)
    assert m["loss"] == pytest.approx(math.log(16), abs=1e-5)
    assert m["bits_per_dim"] == pytest.approx(4.0, abs=1e-5)
    if objective == "ar":  # all logits equal: argmax is colour 0
        assert m["accuracy"] == pytest.approx((tokens == 0).mean())
    else:
        assert m["accuracy"] is None


# --------------------------------------------------------------------------- the card
def _train(out, objective="ar", tokens=None, record=None, palette=None):
    from igpt_eval.train.runs import pretrain

    cfg = IGPTConfig.preset("tiny", objective=objective)
    if tokens is None:
        rng = np.random.default_rng(1)
        tokens = rng.integers(0, 16, (48, 64)).astype(np.uint16)
    tc = TrainConfig(steps=6, batch_size=8, eval_every=3, checkpoint_every=6, eval_images=16)
    if palette is None:
        palette = Palette(np.linspace(-1, 1, 16, dtype=np.float32)[:, None])
    pretrain(cfg, tc, tokens, tokens[:16], out, palette=palette, record=record)
    return out


def _cell(card: str, row: str, col: int) -> float:
    line = next(ln for ln in card.splitlines() if ln.startswith(f"| {row}"))
    return float(line.strip("|").split("|")[col])


def test_card_end_to_end(tmp_path):
    rng = np.random.default_rng(2)
    train = rng.integers(0, 16, (48, 64)).astype(np.uint16)
    test = rng.integers(0, 16, (20, 64)).astype(np.uint16)
    ident = RunRecord(dataset="npz:toy.npz", command="igpt-eval pretrain --model tiny --out x")
    out = _train(tmp_path / "run", tokens=train, record=ident)
    with open(out / "lr_sweep.csv", "w", newline="") as f:
        csv.writer(f).writerows([["lr", "val_loss", "best", "run"], [0.01, 2.9, True, "a"]])
    measured = measure_checkpoint(out, train_tokens=train, test_tokens=test)
    card_path = write_model_card(out, measured, reports_dir=tmp_path / "reports", name="toy")
    card = card_path.read_text()

    model = load_model(out)
    loss = evaluate(model, test)
    base = token_baselines(train, test, 16)
    assert _cell(card, "this model", 1) == pytest.approx(loss, abs=5e-5)
    assert _cell(card, "this model", 2) == pytest.approx(loss / math.log(2), abs=5e-5)
    assert _cell(card, "this model", 3) == pytest.approx(
        model_metrics(model, test)["accuracy"], abs=5e-5
    )
    assert _cell(card, "unigram", 1) == pytest.approx(base["unigram_ce"], abs=5e-5)
    assert _cell(card, "previous pixel", 1) == pytest.approx(base["bigram_ce"], abs=5e-5)
    assert _cell(card, "previous pixel", 3) == pytest.approx(base["prev_pixel_accuracy"], abs=5e-5)
    # The training numbers are the log's.
    with open(out / "train_log.csv") as f:
        log = list(csv.DictReader(f))
    train_loss = np.mean([float(r["train_loss"]) for r in log])
    val_loss = [float(r["val_loss"]) for r in log if r["val_loss"]][-1]
    m = re.search(r"final train loss ([\d.]+) .* final validation loss ([\d.]+)", card)
    assert float(m[1]) == pytest.approx(train_loss, abs=5e-5)
    assert float(m[2]) == pytest.approx(val_loss, abs=5e-5)
    wall = float(re.search(r"wall time ([\d.]+) s", card)[1])
    assert wall == pytest.approx(float(log[-1]["seconds"]), abs=0.05)
    assert ident.command in card and "npz:toy.npz" in card
    assert f"{model.n_params():,} parameters" in card
    assert "| 0.01 | 2.9000 | yes |" in card  # the sweep table
    not_below = "is not below the unigram entropy" in card
    assert not_below == (loss >= base["unigram_ce"])
    for fig in ("loss_curve", "completions"):
        assert f"]({fig}.png)" in card
        assert_png(out / f"{fig}.png")
        assert_png(tmp_path / "reports" / f"toy-{fig}.png")


def test_card_of_a_bert_model_says_why_there_are_no_completions(tmp_path):
    out = _train(tmp_path / "bert", objective="bert")
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 16, (12, 64)).astype(np.uint16)
    card = write_model_card(out, measure_checkpoint(out, train_tokens=tokens, test_tokens=tokens))
    card = card.read_text()
    assert "No completions: a BERT model" in card
    assert "not recorded" in card  # no command in this run.json
    assert not (out / "completions.png").exists()
    assert_png(out / "loss_curve.png")
    header = next(ln for ln in card.splitlines() if ln.startswith("| predictor"))
    assert "accuracy" not in header  # BERT is scored on masked pixels: no next-pixel accuracy


def test_card_refuses_tokens_of_the_wrong_length(tmp_path):
    out = _train(tmp_path / "run")
    with pytest.raises(ValueError, match="needs"):
        measure_checkpoint(out, train_tokens=np.zeros((4, 10)), test_tokens=np.zeros((4, 10)))


# --------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    """A tiny AR model trained on a grey npz dataset (8×8 gradients), as `pretrain` would."""
    from igpt_eval.data import load_tokens

    root = tmp_path_factory.mktemp("grey")
    rng = np.random.default_rng(4)
    ramp = np.linspace(0, 255, 8)
    images = (ramp[None, :, None] * rng.uniform(0.3, 1, (60, 1, 1))).repeat(8, 2)
    images = np.clip(images.transpose(0, 2, 1) + rng.normal(0, 8, images.shape), 0, 255)
    npz = root / "grey.npz"
    np.savez(npz, images=images.astype(np.uint8), labels=np.arange(60) % 2)
    name = f"npz:{npz}"
    train = load_dataset(name, split="train", n_px=8)
    palette = Palette.fit(train.images, 16, seed=0)
    tokens = load_tokens(train, palette, root / "cache").tokens
    ident = RunRecord(
        dataset=name,
        train_fingerprint=train.fingerprint,
        palette_hash=palette.hash,
        command=f"igpt-eval pretrain --dataset {name} --model tiny",
    )
    out = _train(root / "run", tokens=tokens, record=ident, palette=palette)
    return out, name, root


def test_cli_sample_and_complete(grey_run, tmp_path, capsys):
    out, name, _ = grey_run
    png = tmp_path / "s.png"
    assert main(["sample", "--model", str(out), "--n", "4", "--out", str(png)]) == 0
    assert_png(png)
    comp = tmp_path / "c.png"
    args = ["sample", "--model", str(out), "--complete", "--n", "3", "--out", str(comp)]
    assert main([*args, "--dataset", name, "--top-k", "4"]) == 0
    assert_png(comp)
    assert "completions of 3" in capsys.readouterr().out
    before = comp.read_bytes()
    assert main(args) == 2  # the dataset comes from run.json; --out exists
    assert "--overwrite" in one_error_line(capsys)
    assert comp.read_bytes() == before
    assert main([*args, "--overwrite", "--seed", "1"]) == 0


def test_cli_sample_errors(grey_run, tmp_path, capsys):
    out, _, _ = grey_run
    png = str(tmp_path / "x.png")
    assert main(["sample", "--model", str(tmp_path / "nothing"), "--out", png]) == 2
    assert "no model at" in one_error_line(capsys)
    bert = tmp_path / "bert"
    save_model(
        IGPT(IGPTConfig.preset("tiny", objective="bert")),
        bert,
        palette=Palette(np.linspace(-1, 1, 16, dtype=np.float32)[:, None]),
    )
    assert main(["sample", "--model", str(bert), "--out", png]) == 2
    assert "autoregressive" in one_error_line(capsys)
    assert main(["sample", "--model", str(out), "--n", "0", "--out", png]) == 2
    one_error_line(capsys)
    assert not (tmp_path / "x.png").exists()


def test_cli_model_card(grey_run, tmp_path, capsys):
    out, name, root = grey_run
    args = ["model-card", "--model", str(out), "--token-cache", str(root / "cache")]
    reports = tmp_path / "reports"
    assert main([*args, "--reports", str(reports), "--name", "grey"]) == 0
    card = (out / "MODEL_CARD.md").read_text()
    assert name in card and "| this model (AR) |" in card
    assert_png(reports / "grey-loss_curve.png")
    assert_png(reports / "grey-completions.png")
    capsys.readouterr()
    assert main(args) == 2  # the card exists
    assert "--overwrite" in one_error_line(capsys)
    # Another dataset is not the one the model was trained on.
    other = tmp_path / "other.npz"
    rng = np.random.default_rng(5)
    np.savez(
        other,
        images=rng.integers(0, 255, (30, 8, 8), dtype=np.uint8),
        labels=np.zeros(30, dtype=np.int64),
    )
    assert main([*args, "--overwrite", "--dataset", f"npz:{other}"]) == 2
    assert "not the one" in one_error_line(capsys)


def _probe_rows(model="m"):
    from igpt_eval.results import to_frame

    rows = []
    for layer, val in enumerate([0.7, 0.9, 0.8]):
        common = dict(model=model, probe="lbfgs", layer=layer, site=f"blocks.{layer}.ln_1")
        common.update(metric="accuracy", C=0.5 * (layer + 1), lr=float("nan"), n_iter=9)
        common.update(converged=True, site_kind="ln_1", selected=True, ci_low=0.1, ci_high=0.9)
        rows.append(dict(common, split="val", value=val, n_train=100, n_eval=20))
        rows.append(dict(common, split="test", value=0.5 + layer / 10, n_train=120, n_eval=30))
    return to_frame(rows)


def test_probe_section_replaces_itself_and_keeps_the_rest(tmp_path):
    from igpt_eval.errors import IGPTError
    from igpt_eval.reporting.probe_card import set_probe_section

    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# m\n\n## Results\n\nloss 1.0\n\n## Figures\n\n![x](x.png)\n")
    set_probe_section(tmp_path, _probe_rows(), "m", "runs/compare")
    text = card.read_text()
    assert text.index("## Results") < text.index("## Linear probes") < text.index("## Figures")
    assert "| 1 (best on val) | blocks.1.ln_1 | 60.00% [10.00, 90.00] | 1 |" in text
    assert "on 20 validation images after training on 100" in text and "loss 1.0" in text
    set_probe_section(tmp_path, _probe_rows(), "m", "runs/compare")  # again: still one section
    assert card.read_text() == text
    with pytest.raises(IGPTError, match="no probe results for 'other'"):
        set_probe_section(tmp_path, _probe_rows(), "other", "f")
    import pandas as pd

    twice = pd.concat([_probe_rows(), _probe_rows()], ignore_index=True)
    with pytest.raises(IGPTError, match="several probe runs"):
        set_probe_section(tmp_path, twice, "m", "f")
    assert card.read_text() == text  # refused: the card is left as it was
    with pytest.raises(IGPTError, match="write the card first"):
        set_probe_section(tmp_path / "nowhere", _probe_rows(), "m", "f")


def test_model_card_takes_several_probe_runs_one_subsection_each(tmp_path, capsys):
    from igpt_eval.results import save_results

    sample, full = _probe_rows(), _probe_rows()
    full.loc[full.split == "val", "n_train"] = 5400
    full.loc[full.split == "test", "value"] += 0.2  # the full-train probes score higher
    save_results(sample, tmp_path / "sample")
    save_results(full, tmp_path / "full")
    card = tmp_path / "m" / "MODEL_CARD.md"
    card.parent.mkdir()
    card.write_text("# m\n\n## Linear probes\n\nold table\n\n## Figures\n\n![x](x.png)\n")
    args = ["model-card", "--model", str(card.parent), "--probe-results", str(tmp_path / "sample")]
    assert main([*args, "--probe-results", str(tmp_path / "full")]) == 0
    text = card.read_text()
    assert "old table" not in text and text.count("## Linear probes") == 1
    a, b = text.index("### Probes trained on 100 images"), text.index("### Probes trained on 5,400")
    assert a < b < text.index("## Figures")
    assert "| 1 (best on val) | blocks.1.ln_1 | 60.00% [10.00, 90.00]" in text[a:b]
    assert "| 1 (best on val) | blocks.1.ln_1 | 80.00% [10.00, 90.00]" in text[b:]
    assert main(args) == 0  # one run again: one plain section, the subsections gone
    text = card.read_text()
    assert "###" not in text and "60.00%" in text and "80.00%" not in text
    assert text.endswith("## Figures\n\n![x](x.png)\n")
    capsys.readouterr()
    assert main([*args, "--probe-results", str(tmp_path / "nowhere")]) == 2
    assert "no results" in one_error_line(capsys) and card.read_text() == text


def test_probe_section_of_sgd_shows_the_rate_and_paired_lines():
    from igpt_eval.reporting.probe_card import probe_section
    from igpt_eval.results import to_frame

    df = _probe_rows()
    df["probe"], df["lr"], df["C"] = "sgd", 3.0, float("nan")
    diff = dict(model="m", probe="sgd", split="test", layer=1, site="blocks.1.ln_1")
    diff.update(metric="accuracy_diff", value=0.012, ci_low=0.006, ci_high=0.018, p_value=0.02)
    diff.update(contrast="best_vs_last", vs_model="m", vs_probe="sgd", vs_layer=2, vs_site="x")
    text = probe_section(to_frame([*df.to_dict("records"), diff]), "m", "f")
    assert "learning rate chosen on 20 validation images" in text and "C chosen" not in text
    assert "| 1 (best on val) | blocks.1.ln_1 | 60.00% [10.00, 90.00] | 3 |" in text
    assert "nan" not in text
    assert "- best (layer 1) − last (layer 2): +1.20 pp [+0.60, +1.80], McNemar p = 0.02" in text


@pytest.mark.parametrize("masks, words", [(0, "of the unmasked image"), (5, "over 5 random")])
def test_probe_section_of_a_bert_model_says_what_it_was_extracted_from(masks, words):
    from igpt_eval.reporting.probe_card import probe_section

    df = _probe_rows().assign(objective="bert", bert_masks=masks)
    assert words in probe_section(df, "m", "f")
    ar = _probe_rows().assign(objective="ar", bert_masks=0)
    assert "mask" not in probe_section(ar, "m", "f")


def test_cli_complete_reads_the_runs_own_split(grey_run, tmp_path, monkeypatch):
    """--split val completes the run's own validation images: the split seed is the run's."""
    import json

    import igpt_eval.data as data

    out, _, _ = grey_run
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "split_seed": 7}))
    seen, real = [], data.load_dataset

    def spy(*a, **k):
        seen.append(k.get("seed"))
        return real(*a, **k)

    monkeypatch.setattr(data, "load_dataset", spy)
    png = tmp_path / "v.png"
    argv = ["sample", "--model", str(out), "--complete", "--split", "val", "--n", "2"]
    assert main([*argv, "--out", str(png)]) == 0
    assert seen == [7]
