"""What probing a released-size iGPT costs on this machine: all-layer extraction at 32 × 32.

The released models cannot be downloaded here, and their cost does not depend on their
weights, so this times the real extraction path (:func:`igpt_eval.cache.write_cache`: every
layer's pooled ``ln_1`` features, written to an on-disk cache) on a random-weights model of
each preset's shape (iGPT-S 512 × 24, iGPT-M 1024 × 36; 32 × 32 px, 512 colours) and turns the
measured images/s into the hours CIFAR-10's 60,000 images would take. The matmul peak is
measured beside it, so the result reads as a fraction of what this CPU can do.

    python benchmarks/released_cost.py                     # S and M, float32
    python benchmarks/released_cost.py --presets S --n 32  # a quicker look

Writes ``benchmarks/results/released_cost.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import matmul_gflops  # noqa: E402

CIFAR10_IMAGES = 60_000


def measure(preset: str, n: int, batch: int, seed: int = 0) -> dict:
    """Time ``n`` images (after one warm-up batch) through the extraction path of a
    random-weights model of ``preset``'s shape."""
    from igpt_eval.cache import ExtractSettings, write_cache
    from igpt_eval.model import IGPT, IGPTConfig

    cfg = IGPTConfig.preset(preset, n_px=32, vocab_size=512)
    model = IGPT.initialised(cfg, seed).eval()
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (n + batch, cfg.n_positions), dtype=np.uint16)
    labels = np.zeros(len(tokens), np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up batch: first-call allocations and kernel selection are not the steady state.
        settings = ExtractSettings(batch_size=batch)
        write_cache(model, tokens[:batch], labels[:batch], Path(tmp) / "warm", settings)
        t0 = time.perf_counter()
        write_cache(model, tokens[batch:], labels[batch:], Path(tmp) / "run", settings)
        seconds = time.perf_counter() - t0
    flops = cfg.n_positions * cfg.flops_per_token(head=False)  # per image
    ips = n / seconds
    return {
        "preset": preset,
        "config": cfg.to_dict(),
        "params": model.n_params(),
        "sites": cfg.n_layer + 1,
        "n": n,
        "batch": batch,
        "seconds": seconds,
        "images_per_s": ips,
        "gflop_per_image": flops / 1e9,
        "gflops": ips * flops / 1e9,
        "cifar10_hours": CIFAR10_IMAGES / ips / 3600,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["S", "M"])
    ap.add_argument("--n", type=int, default=64, help="timed images per preset (S; M gets n/4)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/released_cost.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_gflops(torch.float32)
    runs = []
    for preset in args.presets:
        n = args.n if preset == "S" else max(args.batch, args.n // 4)
        r = measure(preset, n, args.batch)
        r["fraction_of_matmul_peak"] = r["gflops"] / peak
        runs.append(r)
        print(
            f"{preset}: {r['params'] / 1e6:6.1f}M params, {r['images_per_s']:6.3f} images/s, "
            f"{r['gflops']:6.1f} GFLOP/s ({r['fraction_of_matmul_peak']:.0%} of peak), "
            f"CIFAR-10 (60k images): {r['cifar10_hours']:.1f} h",
            flush=True,
        )
    result = {
        "benchmark": "released-model shapes: all-layer extraction at 32x32, random weights",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "compute": "float32",
        "matmul_peak_gflops_float32": peak,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
