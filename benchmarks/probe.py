"""The probe sweep (all layers × a C grid): batched torch L-BFGS vs scikit-learn, one run.

Both sides solve the same problems — every cached layer of a model × every C of the grid,
on the training split — with the same gradient tolerance (max-abs gradient <= tol) and
iteration cap; ours also stops only once its estimated distance to the optimum is below
1e-8 nats (:mod:`igpt_eval.probes.lbfgs`). scikit-learn solves one problem at a time from
zero, as the ``sklearn`` backend does (Newton-Cholesky where the Hessian fits, else lbfgs);
ours is batched over layers and walks the C path with warm starts (``fit_path``, as the
protocol does); ours cold (``fit_grid``: every problem from zero, all in one batch) is timed
too. Reported: the wall-time ratios and, per layer, the validation-accuracy difference at
every C.

    python benchmarks/probe.py --max-rows 10000                 # models/fmnist-ar, CPU
    python benchmarks/probe.py --device cuda --cuml             # on a CUDA GPU, plus cuML

Features come from the activation caches (built on first use, as `igpt-eval probe` does).
Writes ``benchmarks/results/probe.json`` (``probe-<device>.json`` off the CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from igpt_eval.cache import ExtractSettings
from igpt_eval.cache.extraction import extract_split
from igpt_eval.defaults import BERT_MASKS
from igpt_eval.model.head import feature_scale
from igpt_eval.model.loading import open_model
from igpt_eval.probes import COARSE_CS, LBFGSOptions, fit_grid, fit_path
from igpt_eval.probes.backends import fit_cuml, fit_sklearn
from igpt_eval.studies.probe import DEFAULT_MODEL, load_features


def accuracy(X, y, coef, intercept) -> float:
    return float(((X @ coef.T + intercept).argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="a stratified sample of N training images (default: all)",
    )
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cuml", action="store_true", help="also time the cuML backend (GPU)")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--raw", action="store_true", help="do not standardise the features")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    net, palette, ident = open_model(args.model)
    # Exact float32 features, as `igpt-eval probe` extracts them; --max-rows extracts a
    # stratified sample of the training split (the cache `probe --train-size N` builds).
    settings = ExtractSettings(site="ln_1", seed=0, compute="float32", bert_masks=BERT_MASKS)
    caches = {
        s: extract_split(net, palette, ident, None, s, settings=settings,
                         max_rows=args.max_rows if s == "train" else None)
        for s in ("train", "val")
    }  # fmt: skip
    feats, layers, _ = load_features(caches, None)
    Xtr, ytr = feats["train"].X, feats["train"].y
    Xva, yva = feats["val"].X, feats["val"].y
    if not args.raw:  # as the protocol does: standardise with training statistics
        mu, sd = (a.astype(Xtr.dtype) for a in feature_scale(Xtr))
        Xtr, Xva = (Xtr - mu) / sd, (Xva - mu) / sd
    G, N, d = Xtr.shape
    K = len(np.unique(ytr))
    Cs = COARSE_CS
    print(
        f"{args.model.name}: {G} layers x {len(Cs)} C values = {G * len(Cs)} problems, "
        f"N={N}, d={d}, K={K}, tol={args.tol}, {torch.get_num_threads()} threads"
    )

    runs: dict[str, dict] = {}
    acc: dict[str, np.ndarray] = {}
    # Ours as the protocol solves a grid (the C path, warm-started from one C to the next,
    # all layers batched), and the same solver cold (every problem from zero, all batched).
    for name, solve in (("torch", fit_path), ("torch cold grid", fit_grid)):
        t0 = time.perf_counter()
        options = LBFGSOptions(tol=args.tol, max_iter=args.max_iter)
        res = solve(Xtr, ytr, Cs, K, device=args.device, options=options)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        acc[name] = np.array(
            [
                [
                    accuracy(Xva[g], yva, res.coef[g, c].numpy(), res.intercept[g, c].numpy())
                    for c in range(len(Cs))
                ]
                for g in range(G)
            ]
        )
        runs[name] = {
            "seconds": secs,
            "converged": int(res.converged.sum()),
            "max_n_iter": int(res.n_iter.max()),
            "total_n_iter": int(res.n_iter.sum()),
        }
    ours_s = runs["torch"]["seconds"]
    others = [] if args.skip_sklearn else [("sklearn", fit_sklearn)]
    if args.cuml:
        others.append(("cuml", fit_cuml))
    for name, fit in others:
        t0 = time.perf_counter()
        fits = [
            [fit(Xtr[g], ytr, float(C), K, tol=args.tol, max_iter=args.max_iter) for C in Cs]
            for g in range(G)
        ]
        secs = time.perf_counter() - t0
        acc[name] = np.array(
            [
                [accuracy(Xva[g], yva, f.coef, f.intercept) for f in row]
                for g, row in enumerate(fits)
            ]
        )
        runs[name] = {
            "seconds": secs,
            "converged": int(sum(f.converged for r in fits for f in r)),
            "max_n_iter": int(max(f.n_iter for r in fits for f in r)),
            "total_n_iter": int(sum(f.n_iter for r in fits for f in r)),
            "speedup_of_torch": secs / ours_s,
            "speedup_of_torch_cold_grid": secs / runs["torch cold grid"]["seconds"],
        }
    diffs = {
        name: (100 * np.abs(acc["torch"] - a)).tolist()
        for name, a in acc.items()
        if name != "torch"
    }
    result = {
        "benchmark": "probe: all layers x C grid",
        "model": str(args.model),
        "layers": layers,
        "Cs": Cs.tolist(),
        "n_train": N,
        "dim": d,
        "tol": args.tol,
        "standardized": not args.raw,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "runs": runs,
        "val_accuracy": {k: v.tolist() for k, v in acc.items()},
        "abs_accuracy_diff_pp": diffs,
    }
    out = args.out or Path("benchmarks/results") / (
        "probe.json" if args.device == "cpu" else f"probe-{args.device.replace(':', '')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'solver':<16} {'seconds':>9} {'converged':>10} {'iterations':>11}")
    for name, r in runs.items():
        print(
            f"{name:<16} {r['seconds']:9.1f} {r['converged']:>6}/{G * len(Cs):<3} "
            f"{r['total_n_iter']:>11}"
        )
    for name, r in runs.items():
        if "speedup_of_torch" in r:
            print(
                f"torch is {r['speedup_of_torch']:.1f}x faster than {name} "
                f"(cold grid: {r['speedup_of_torch_cold_grid']:.1f}x)"
            )
    for name, dd in diffs.items():
        per_layer = np.max(dd, axis=1)
        print(
            f"max |val acc diff| per layer vs {name} (pp): "
            + ", ".join(f"{x:.2f}" for x in per_layer)
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
