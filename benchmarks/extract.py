"""Activation-cache extraction end to end: igpt-eval vs Hugging Face ImageGPT, same weights.

Both sides start from tokens on disk (a uint16 ``.npy`` memmap) and end with every layer's
pooled features on disk (one ``.npy`` per layer, written through memmaps):

- ours: :func:`igpt_eval.cache.write_cache` (features stop at the last layer, pool on the fly,
  one batch mapped at a time, a manifest committed per batch);
- reference: ``ImageGPTModel(output_hidden_states=True)`` on ``[sos] + tokens[:-1]``, each
  block's ``ln_1`` applied to its hidden state (``ln_f`` output last), averaged over
  positions, written into ``open_memmap`` files batch by batch.

Each run is its own subprocess, so its peak resident memory (``VmHWM``) is its own; ours is
measured for N and 10×N images to show that memory does not grow with N. (With glibc's
default, adaptive mmap threshold, freed batch temporaries can stay in a fragmented heap and
the peak creeps up by tens of MB before levelling off; ``--malloc-mmap-threshold 1048576``
shows the extractor's own footprint.) The two sides' features are checked to agree before
the table is printed.

    python benchmarks/extract.py                      # `mini` preset, random weights, N=512
    python benchmarks/extract.py --model models/fmnist-ar --n 256

Writes ``benchmarks/results/extract.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))


def vm_hwm_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> dict:
    """One timed run in this process: tokens file → per-layer feature files."""
    from igpt_eval.model import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.ckpt)
    tokens = np.load(args.tokens, mmap_mode="r")  # [N, T] uint16 on disk
    n = len(tokens)
    out = Path(args.out)
    if args.worker == "ours":
        from igpt_eval.cache import ExtractSettings, write_cache

        base = vm_hwm_mb()
        t0 = time.perf_counter()
        write_cache(
            model, tokens, np.zeros(n, np.int64), out, ExtractSettings(batch_size=args.batch)
        )
    else:
        from forward import hf_reference
        from numpy.lib.format import open_memmap

        ref = hf_reference(model)
        k, L, d = model.config.vocab_size, model.config.n_layer, model.config.n_embd
        base = vm_hwm_mb()
        t0 = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        files = [open_memmap(out / f"{i}.npy", "w+", np.float32, (n, d)) for i in range(L + 1)]
        with torch.no_grad():
            for lo in range(0, n, args.batch):
                x = torch.from_numpy(tokens[lo : lo + args.batch].astype(np.int64))
                x = torch.cat([torch.full((len(x), 1), k), x[:, :-1]], 1)  # HF wants SOS first
                hs = ref(x, output_hidden_states=True).hidden_states  # L+1 × (B, T, d)
                pooled = [blk.ln_1(h).mean(1) for blk, h in zip(ref.h, hs[:-1], strict=True)]
                for f, p in zip(files, [*pooled, hs[-1].mean(1)], strict=True):
                    f[lo : lo + len(x)] = p.float().numpy()
        for f in files:
            f.flush()
    seconds = time.perf_counter() - t0
    return {
        "side": args.worker,
        "n": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "peak_rss_mb": vm_hwm_mb(),
        "rss_before_extraction_mb": base,
        "threads": torch.get_num_threads(),
    }


def run_worker(side: str, tokens: Path, ckpt: Path, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--tokens", str(tokens), "--ckpt", str(ckpt)]
    cmd += ["--out", str(out), "--batch", str(args.batch), "--threads", str(args.threads or 0)]
    env = dict(os.environ)
    if args.malloc_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if r.returncode:
        raise SystemExit(f"{side} worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mini", help="random-weight preset (default mini)")
    ap.add_argument("--model", type=Path, default=None, help="a checkpoint folder instead")
    ap.add_argument("--n", type=int, default=512, help="images (ours also runs 10x this)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=None,
        metavar="BYTES",
        help="fix glibc's mmap threshold in the runs (e.g. 1048576), so freed batch "
        "temporaries go back to the OS instead of fragmenting the heap",
    )
    ap.add_argument("--out", default="benchmarks/results/extract.json")
    ap.add_argument("--worker", choices=["ours", "hf"], help=argparse.SUPPRESS)
    ap.add_argument("--tokens", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from igpt_eval.model import IGPT, load_model, save_model
    from igpt_eval.model.config import IGPTConfig

    with tempfile.TemporaryDirectory(prefix="igpt-extract-bench-") as tmp:
        tmp = Path(tmp)
        if args.model is not None:
            ckpt, cfg = args.model, load_model(args.model).config
        else:
            cfg = IGPTConfig.preset(args.preset)
            torch.manual_seed(0)
            model = IGPT(cfg)
            with torch.no_grad():  # random, non-trivial weights (the zero head is unused)
                for p in model.parameters():
                    p.normal_(std=0.05)
            ckpt = save_model(model, tmp / "ckpt")
        rng = np.random.default_rng(0)
        for n in (args.n, 10 * args.n):
            toks = rng.integers(0, cfg.vocab_size, (n, cfg.n_positions)).astype(np.uint16)
            np.save(tmp / f"tokens-{n}.npy", toks)
        runs = [
            run_worker("ours", tmp / f"tokens-{args.n}.npy", ckpt, tmp / "ours", args),
            run_worker("hf", tmp / f"tokens-{args.n}.npy", ckpt, tmp / "hf", args),
            run_worker("ours", tmp / f"tokens-{10 * args.n}.npy", ckpt, tmp / "ours10", args),
        ]
        from igpt_eval.cache import ActivationCache

        ours = ActivationCache.open(tmp / "ours")
        diff = max(
            float(np.abs(a - np.load(tmp / "hf" / f"{layer}.npy")).max()) for layer, a in ours
        )
    assert diff < 1e-4, f"features disagree with HF (max abs diff {diff})"
    speed = runs[0]["images_per_s"] / runs[1]["images_per_s"]
    growth = runs[2]["peak_rss_mb"] - runs[0]["peak_rss_mb"]
    result = {
        "benchmark": "extract: tokens on disk -> pooled features of every layer on disk",
        "config": cfg.to_dict(),
        "model": str(args.model) if args.model else f"preset {args.preset}, random weights",
        "batch": args.batch,
        "malloc_mmap_threshold": args.malloc_mmap_threshold,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "max_abs_diff_vs_hf": diff,
        "speedup_vs_hf": speed,
        "peak_rss_growth_mb_n_to_10n": growth,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"{result['model']}: n_px={cfg.n_px} d={cfg.n_embd} layers={cfg.n_layer}, batch "
        f"{args.batch}, {runs[0]['threads']} threads, torch {torch.__version__}; features "
        f"agree with HF to {diff:.1e}"
    )
    print(f"{'run':<6} {'images':>7} {'img/s':>8} {'peak RSS MB':>12} {'before MB':>10}")
    for r in runs:
        print(
            f"{r['side']:<6} {r['n']:>7} {r['images_per_s']:8.1f} {r['peak_rss_mb']:12.0f} "
            f"{r['rss_before_extraction_mb']:10.0f}"
        )
    print(f"ours vs HF end to end: {speed:.2f}x; peak RSS N -> 10N: {growth:+.1f} MB")


if __name__ == "__main__":
    main()
