"""The CPU pilot that chose the campaign's resolution and palette (docs/campaign.md).

A model's features can only beat the raw-pixel control by what the model learns, and its
tokens keep only what the resolution and the palette keep. For each candidate (resolution,
palette size) this measures, on the main job's stratified sample of Fashion-MNIST (5,000 train
/ 2,000 val / 5,000 test images, the same images for every candidate):

- the linear probe on the palette-quantised pixels (the ``pixels`` control at that size),
  against the native 28 × 28 grey pixels (``pixels_native``) on the same test images: the
  paired difference with its bootstrap 95% CI and McNemar's p;
- how hard next-pixel prediction is: the entropy of a token (bits) and of a token given the
  one before it in raster order (a bigram model's loss, bits per pixel), on the training split;
- the sequence length and, for the campaign's shape (16 layers × d 192), the training FLOPs
  per image.

    python benchmarks/campaign_pilot.py

Writes ``benchmarks/results/campaign_pilot.json``; takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from igpt_eval.data import DataSource, load_dataset, load_tokens
from igpt_eval.data.palette import Palette
from igpt_eval.defaults import SAMPLE_TEST, SAMPLE_TRAIN, SAMPLE_VAL
from igpt_eval.probes.pixels import probe_native_pixels, probe_pixels
from igpt_eval.stats import paired_difference
from igpt_eval.studies.campaign_plan import model_config
from igpt_eval.studies.settings import CampaignSettings

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [(16, 16), (16, 32), (28, 16), (28, 32), (28, 64)]
SIZES = dict(train=SAMPLE_TRAIN, val=SAMPLE_VAL, test=SAMPLE_TEST)


def entropies(tokens: np.ndarray, k: int) -> tuple[float, float]:
    """(H(x), H(x_t | x_{t−1})) in bits over every position of ``tokens`` (N, T)."""
    t = tokens.astype(np.int64)
    p = np.bincount(t.ravel(), minlength=k) / t.size
    h = -np.sum(p[p > 0] * np.log2(p[p > 0]))
    pairs = np.bincount((t[:, :-1] * k + t[:, 1:]).ravel(), minlength=k * k).reshape(k, k)
    joint = pairs / pairs.sum()
    prev = joint.sum(1, keepdims=True)
    nz = joint > 0
    h_cond = -np.sum(joint[nz] * np.log2((joint / np.maximum(prev, 1e-300))[nz]))
    return float(h), float(h_cond)


def test_correct(rows, predictions, key_model: str):
    acc = next(r for r in rows if r["split"] == "test" and r["metric"] == "accuracy")
    key = next(k for k in predictions.pred if k.startswith(key_model))
    return acc, predictions.correct(key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()
    s = CampaignSettings()
    native_rows, native_pred = probe_native_pixels(
        DataSource("fashion-mnist", args.data_dir), sizes=SIZES
    )
    native_acc, native_ok = test_correct(native_rows, native_pred, "pixels_native")
    print(f"native 28x28 grey pixels: test {100 * native_acc['value']:.2f}%")
    out = {"sample": SIZES, "native_test_acc": native_acc["value"], "candidates": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n_px, k in CANDIDATES:
            train = load_dataset("fashion-mnist", split="train", n_px=n_px, data_dir=args.data_dir)
            palette = Palette.fit(train.images, k, seed=0)
            tokens = load_tokens(train, palette, tmp).tokens
            h, h_cond = entropies(np.asarray(tokens), k)
            rows, pred = probe_pixels(
                palette, DataSource("fashion-mnist", args.data_dir, token_cache=tmp), n_px=n_px,
                sizes=SIZES,
            )  # fmt: skip
            acc, ok = test_correct(rows, pred, "pixels")
            d = paired_difference(ok, native_ok)
            cfg = model_config(s.replace(n_px=n_px, vocab_size=k))
            row = dict(
                n_px=n_px, colours=k, T=n_px * n_px, test_acc=acc["value"],
                ci_low=acc["ci_low"], ci_high=acc["ci_high"], minus_native=d.diff,
                minus_native_ci=[d.ci_low, d.ci_high], mcnemar_p=d.p_value,
                entropy_bits=h, bigram_bits_per_pixel=h_cond,
                train_gflop_per_image=cfg.flops_per_token(training=True) * cfg.n_positions / 1e9,
            )  # fmt: skip
            out["candidates"].append(row)
            print(
                f"{n_px:>2} px, {k:>2} colours: pixels {100 * acc['value']:.2f}% "
                f"({100 * d.diff:+.2f} pp vs native [{100 * d.ci_low:+.2f}, "
                f"{100 * d.ci_high:+.2f}], p = {d.p_value:.3g}); H = {h:.2f} bits, "
                f"bigram {h_cond:.2f} bits/pixel; {row['train_gflop_per_image']:.1f} "
                "training GFLOP per image"
            )
    path = ROOT / "benchmarks" / "results" / "campaign_pilot.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
