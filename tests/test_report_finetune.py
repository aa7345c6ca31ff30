"""The report's fine-tuning section: fine-tuned classifiers paired with the comparison's
probes and with each other on the same test images."""

import numpy as np
import pandas as pd
import pytest

from igpt_eval.errors import IGPTError
from igpt_eval.predictions import Predictions
from igpt_eval.reporting.finetune import finetune_section, load_finetunes
from igpt_eval.results import save_results, to_frame
from igpt_eval.stats import paired_difference

N = 400
RNG = np.random.default_rng(0)
LABELS = RNG.integers(0, 10, N)


def guesses(acc: float, seed: int) -> np.ndarray:
    """Predictions right on about ``acc`` of the test images."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(N) < acc, LABELS, (LABELS + 1) % 10)


def comparison():
    rows, pred = [], Predictions()
    for layer, (val, acc) in enumerate([(0.70, 0.71), (0.80, 0.79), (0.75, 0.76)]):
        site = f"blocks.{layer}.ln_1"
        common = dict(model="m", probe="lbfgs", layer=layer, site=site, metric="accuracy",
                      selected=True, ci_low=acc - 0.02, ci_high=acc + 0.02)  # fmt: skip
        rows += [dict(common, split="val", value=val), dict(common, split="test", value=acc)]
        pred.add(f"m/lbfgs/{site}", guesses(acc, layer), LABELS)
    rows.append(dict(model="pixels", probe="pixels", layer=0, site="pixels", split="test",
                     metric="accuracy", value=0.7, ci_low=0.68, ci_high=0.72))  # fmt: skip
    pred.add("pixels/pixels/pixels", guesses(0.7, 9), LABELS)
    return to_frame(rows), pred


def finetuned(tmp_path, model: str, acc: float, seed: int, labels=LABELS):
    common = dict(model=model, probe="finetune", layer=3, site="ln_f", lr=1e-4, steps=900,
                  n_iter=600, finetune_objective="joint", metric="accuracy")  # fmt: skip
    p = guesses(acc, seed)
    rows = [
        dict(common, split="val", value=acc),
        dict(common, split="test", value=float(np.mean(p == labels)), ci_low=0.0, ci_high=1.0),
    ]
    pred = Predictions()
    pred.add(f"{model}/finetune/ln_f", p, labels)
    out = tmp_path / model.replace(" ", "_")
    save_results(to_frame(rows), out, predictions=pred)
    steps = np.arange(100, 1000, 100)  # validation rises to ``acc`` over 900 steps
    curve = acc - 0.3 * np.exp(-steps / (150 if "random" not in model else 400))
    pd.DataFrame(dict(step=steps, val_acc=curve)).to_csv(out / "finetune_log.csv", index=False)
    return out


def test_section_pairs_fine_tuning_with_probes_pixels_and_scratch(tmp_path):
    df, pred = comparison()
    dirs = [finetuned(tmp_path, "m", 0.9, 20), finetuned(tmp_path, "m (random weights)", 0.8, 21)]
    md = finetune_section(*load_finetunes(dirs), df, pred)
    assert "| m | " in md and "linear probe, layer 1 |" in md and "| raw pixels |" in md
    lines = {ln.split(":")[0]: ln for ln in md.splitlines() if ln.startswith("- ")}
    want = paired_difference(guesses(0.9, 20) == LABELS, guesses(0.79, 1) == LABELS)
    line = lines["- m fine-tuned − its best probe (layer 1)"]
    assert f"{100 * want.diff:+.2f}".replace("-", "−") in line
    assert "- m fine-tuned − from scratch (same recipe)" in lines
    assert "- m fine-tuned − raw pixels" in lines
    assert "- m (random weights) fine-tuned − raw pixels" in lines
    # the scratch run's best, 0.8 − 0.3·e^(−900/400) = 0.768, is passed at step 200 (0.821)
    catch = next(ln for ln in lines.values() if "from-scratch run's best" in ln)
    assert "76.84%" in catch and "in 900 steps" in catch and "at step 200, 0.22 of" in catch
    assert not any(mark in md for mark in ("{{", "{%", "{#"))  # every template tag filled


def test_other_test_images_are_refused(tmp_path):
    df, pred = comparison()
    other = finetuned(tmp_path, "m", 0.9, 20, labels=np.roll(LABELS, 1))
    with pytest.raises(IGPTError, match="--test-size all"):
        finetune_section(*load_finetunes([other]), df, pred)
    with pytest.raises(IGPTError, match="no fine-tuning results"):
        load_finetunes([tmp_path / "nowhere"])


def full_probe(tmp_path, acc: float, labels=LABELS):
    """An ``igpt-eval probe --train-size all`` folder of model ``m``: layer 2 chosen on val."""
    rows, pred = [], Predictions()
    for layer, val in enumerate([0.70, 0.80, 0.85]):
        site = f"blocks.{layer}.ln_1"
        common = dict(model="m", probe="lbfgs", layer=layer, site=site, metric="accuracy",
                      selected=True, ci_low=0.0, ci_high=1.0)  # fmt: skip
        p = guesses(acc if layer == 2 else 0.5, 40 + layer)
        test = float(np.mean(p == labels))
        rows += [dict(common, split="val", value=val, n_train=5400),
                 dict(common, split="test", value=test, n_train=6000)]  # fmt: skip
        pred.add(f"m/lbfgs/{site}", p, labels)
    out = tmp_path / "full"
    save_results(to_frame(rows), out, predictions=pred)
    return out


def test_full_train_probes_are_a_second_paired_bar(tmp_path):
    from igpt_eval.reporting.finetune import load_full_probes

    df, pred = comparison()
    ft = load_finetunes([finetuned(tmp_path, "m", 0.9, 20)])
    md = finetune_section(*ft, df, pred, load_full_probes([full_probe(tmp_path, 0.86)]))
    assert "linear probe, layer 1 |" in md  # the comparison's (sample) probe stays
    assert "| linear probe, layer 2, trained on 5,400 images |" in md
    line = next(ln for ln in md.splitlines() if "best full-train probe (layer 2)" in ln)
    want = paired_difference(guesses(0.9, 20) == LABELS, guesses(0.86, 42) == LABELS)
    assert f"{100 * want.diff:+.2f}".replace("-", "−") in line
    # The sample probe's line is still paired with the sample probe's predictions.
    sample = next(ln for ln in md.splitlines() if "its best probe (layer 1)" in ln)
    want = paired_difference(guesses(0.9, 20) == LABELS, guesses(0.79, 1) == LABELS)
    assert f"{100 * want.diff:+.2f}".replace("-", "−") in sample
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(IGPTError, match="--test-size all"):
        shifted = full_probe(other, 0.86, labels=np.roll(LABELS, 1))
        finetune_section(*ft, df, pred, load_full_probes([shifted]))
