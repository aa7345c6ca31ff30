"""Bit-identity check for refactors: compute numbers that must not change, save or compare.

    python benchmarks/reference_numbers.py save  OUT.npz     # before a refactor
    python benchmarks/reference_numbers.py check OUT.npz     # after it: every array equal

Covers the shipped models' features of every layer (Fashion-MNIST test images from Debian's
``dataset-fashion-mnist``, AR and BERT), the activation cache they write, a short pretraining
loss trajectory and a fine-tuning step with a fixed seed, and L-BFGS / SGD probe results.
Runs on one CPU thread in about a minute. The reference used for the package's layout change
was saved from the flat layout (commit ea017a5) with the same computations.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from igpt_eval.cache import ExtractSettings, write_cache
from igpt_eval.data import load_dataset
from igpt_eval.model import IGPT, IGPTConfig, load_model, load_palette
from igpt_eval.probes import LogisticProbe, Protocol, probe_lbfgs
from igpt_eval.probes.protocol import Features
from igpt_eval.probes.sgd import ArraySource, SGDProtocol, probe_sgd
from igpt_eval.train.pretrain import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parent.parent


def _values(rows: list[dict]) -> np.ndarray:
    keys = ("value", "ci_low", "ci_high", "C", "lr", "n_iter")
    return np.array([[float(r.get(k) or np.nan) for k in keys] for r in rows], dtype=np.float64)


def compute() -> dict[str, np.ndarray]:
    torch.set_num_threads(1)
    out: dict[str, np.ndarray] = {}
    test = load_dataset("fashion-mnist", split="test", n_px=16)
    for name in ("fmnist-ar", "fmnist-bert"):
        folder = ROOT / "models" / name
        model = load_model(folder)
        palette = load_palette(folder)
        tokens = palette.encode(test.images[:96])
        labels = test.labels[:96]
        out[f"{name}/tokens"] = tokens
        for site in ("ln_1", "resid_pre", "attn_out", "mlp_out"):
            out[f"{name}/features/{site}"] = model.features(tokens, site=site).numpy()
        out[f"{name}/features/full"] = model.features(tokens[:4], pool=False).numpy()
        if model.config.objective == "ar":
            t4 = torch.from_numpy(tokens[:4].astype(np.int64))
            out[f"{name}/logits"] = model(t4).detach().numpy()  # grad mode: the training path
            with torch.no_grad():
                out[f"{name}/logits_no_grad"] = model(t4).numpy()
            out[f"{name}/generate"] = model.generate(prefix=tokens[:2, :128], seed=0).numpy()
        else:
            out[f"{name}/features/masks3"] = model.features(tokens, n_masks=3).numpy()
        with tempfile.TemporaryDirectory() as tmp:
            cache = write_cache(
                model, tokens, labels, Path(tmp) / "acts",
                ExtractSettings(batch_size=32, bert_masks=2),
            )  # fmt: skip
            for layer in range(len(cache)):
                out[f"{name}/cache/{layer}"] = np.array(cache[layer])
        if name == "fmnist-ar":
            feats = out[f"{name}/features/ln_1"]
            X = feats[:, :64]
            F = Features
            tr, va, te = (
                F(X[:, :40], labels[:40]),
                F(X[:, 40:52], labels[40:52]),
                F(feats[:, 64:], labels[64:]),
            )
            p = LogisticProbe(C=1.0).fit(feats[4, :64], labels[:64])
            out["probe/coef"] = p.coef_
            out["probe/intercept"] = p.intercept_
            out["probe/proba"] = p.predict_proba(feats[4, 64:])
            layers = list(range(X.shape[0]))
            meta = {"model": "ref", "dataset": "fmnist"}
            sites = [f"layer{i}" for i in layers]
            rows, pred = probe_lbfgs(
                tr, va, te, layers, meta=meta, sites=sites,
                protocol=Protocol(max_iter=50, n_boot=200),
            )  # fmt: skip
            out["probe_lbfgs/values"] = _values(rows)
            out["probe_lbfgs/pred"] = np.stack([pred.correct(k) for k in sorted(pred.pred)])
            src = ArraySource
            splits = {
                k: src(f.X, f.y, layers) for k, f in (("train", tr), ("val", va), ("test", te))
            }
            sgd = probe_sgd(
                splits, layers, meta=meta, sites=sites,
                protocol=SGDProtocol(epochs=2, batch_size=16, n_boot=200),
            ).rows  # fmt: skip
            out["probe_sgd/values"] = _values(sgd)
    # A short pretraining run, AR and BERT, with a fixed seed.
    for objective in ("ar", "bert"):
        cfg = IGPTConfig.preset("tiny", objective=objective)
        rng = np.random.default_rng(0)
        train = rng.integers(0, cfg.vocab_size, (64, cfg.n_positions)).astype(np.uint16)
        val = rng.integers(0, cfg.vocab_size, (16, cfg.n_positions)).astype(np.uint16)
        torch.manual_seed(0)
        model = IGPT(cfg)
        tc = TrainConfig(
            steps=12, batch_size=8, lr=3e-3, eval_every=6, eval_images=16, checkpoint_every=100
        )
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(model, train, val, tc, Path(tmp))
            trainer.fit()
            log = (Path(tmp) / "train_log.csv").read_text().splitlines()
        header = log[0].split(",")
        cols = [header.index(c) for c in ("train_loss", "val_loss")]
        out[f"pretrain/{objective}/losses"] = np.array(
            [[float(r.split(",")[c] or "nan") for c in cols] for r in log[1:]]
        )
        out[f"pretrain/{objective}/weights"] = torch.cat(
            [p.detach().flatten() for p in model.parameters()]
        ).numpy()
    return out


def main() -> int:
    mode, path = sys.argv[1], Path(sys.argv[2])
    got = compute()
    if mode == "save":
        np.savez(path, **got)
        print(f"saved {len(got)} arrays to {path}")
        return 0
    ref = np.load(path)
    bad = [
        k for k in ref.files if k not in got or not np.array_equal(ref[k], got[k], equal_nan=True)
    ]
    missing = [k for k in got if k not in ref.files]
    for k in bad:
        print("DIFFERS:", k)
    print(f"{len(ref.files) - len(bad)}/{len(ref.files)} arrays bit-identical; new keys: {missing}")
    return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main())
