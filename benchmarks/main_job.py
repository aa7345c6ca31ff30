"""The main job, ``igpt-eval probe --all-layers``, stage by stage: where its time goes.

Runs the command itself (``igpt_eval.cli.main``, default model and settings) under cProfile,
from cold caches in a temporary cache root, then again on the caches that run wrote (warm),
and attributes each run's wall time to the stages by the cumulative time of the functions
that do them:

- extraction (``extract_split``), split into reading and resizing the dataset
  (``load_dataset``), palette encoding (``Palette.encode``), and the batches (``_fill``:
  the forward pass with pooling, which runs in worker threads cProfile does not see, and
  the cache writes, ``_Rows.write``, which it does);
- the linear probes of every layer (``_probe_lbfgs``), split into the C path on train
  (``walk``, validation scored), its refinement (``refine``), and the refits on train + val
  scored on test (``test``, bootstrap intervals included);
- the pixel controls (``probe_pixel_controls``), the paired differences (``paired_rows``),
  writing results and the figure.

Beside the forward pass it prints the FLOP rate of the extraction (the model's matmul FLOPs,
``IGPTConfig.flops_per_token``, over the forward time) and the float32 matmul peak measured in
the same run. cProfile's own overhead is small here (a few thousand Python calls around
large tensor operations); the total is measured without it too.

    python benchmarks/main_job.py                 # cold, then warm; 2 threads (torch's default)
    python benchmarks/main_job.py --threads 1

Writes ``benchmarks/results/main_job.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_gflops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: (stage, parent stage or None, function name, file suffix): cumulative time of that function.
STAGES = [
    ("extraction", None, "extract_split", "cache/extraction.py"),
    ("  dataset read + resize (all reads*)", "extraction", "load_dataset", "data/dataset.py"),
    ("  palette encode", "extraction", "encode", "data/palette.py"),
    ("  forward + pooling + writes", "extraction", "_fill", "cache/writer.py"),
    ("    (of which cache writes)", "extraction", "write", "cache/writer.py"),
    ("linear probes, every layer", None, "_probe_lbfgs", "studies/probe.py"),
    ("  C path on train (all fits*)", "linear probes, every layer", "walk", "probes/protocol.py"),
    ("  C refined around the best*", "linear probes, every layer", "refine", "probes/protocol.py"),
    ("  refit on train+val, test*", "linear probes, every layer", "test", "probes/protocol.py"),
    (
        "  (of which bootstrap CIs*)",
        "linear probes, every layer",
        "bootstrap_accuracy_ci",
        "igpt_eval/stats.py",
    ),
    ("pixel controls", None, "probe_pixel_controls", "probes/pixels.py"),
    ("paired differences", None, "paired_rows", "probes/paired.py"),
    ("results files", None, "save_results", "results.py"),
    ("figure", None, "save_figure", "reporting/figures.py"),
]


def cumulative(stats: pstats.Stats, name: str, suffix: str) -> float:
    """Cumulative seconds of every function ``name`` defined in a file ending in ``suffix``
    (top-level calls only: a recursive function is counted once)."""
    total = 0.0
    for (file, _, func), (_, _, _, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and file.replace(os.sep, "/").endswith(suffix):
            total += ct
    return total


def run(out: Path, threads: int) -> tuple[float, pstats.Stats]:
    from igpt_eval.cli import main

    argv = ["--threads", str(threads), "probe", "--all-layers", "--no-progress",
            "--out", str(out), "--overwrite"]  # fmt: skip
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    rc = main(argv)
    prof.disable()
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"the main job failed (exit {rc})")
    return seconds, pstats.Stats(prof)


def breakdown(seconds: float, stats: pstats.Stats) -> list[dict]:
    rows = []
    for stage, parent, func, suffix in STAGES:
        rows.append(dict(stage=stage, parent=parent, seconds=cumulative(stats, func, suffix)))
    top = sum(r["seconds"] for r in rows if r["parent"] is None)
    rows.append(dict(stage="other (model load, hashing, printing)", parent=None,
                     seconds=max(0.0, seconds - top)))  # fmt: skip
    for r in rows:
        r["share"] = r["seconds"] / seconds
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/main_job.json")
    args = ap.parse_args()

    from igpt_eval.defaults import DEFAULT_MODEL
    from igpt_eval.model import IGPTConfig
    from igpt_eval.studies.settings import ProbeSettings

    torch.set_num_threads(args.threads)
    # The peak is the best of several squares before the runs and after them: a single one
    # taken first, with the cores not yet at speed, read 40% low here.
    peaks = [matmul_gflops(torch.float32) for _ in range(3)]
    cfg = IGPTConfig.load(Path(DEFAULT_MODEL) / "config.json")
    images = sum(n for n in ProbeSettings().sizes.values() if n is not None)
    flops = images * cfg.n_positions * cfg.flops_per_token(head=False)
    report = dict(
        benchmark="igpt-eval probe --all-layers, stage by stage (cProfile)",
        model=str(Path(DEFAULT_MODEL).name), images_extracted=images, threads=args.threads,
        torch=torch.__version__, machine=platform.machine(), processor=platform.processor(),
        runs={},
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["IGPT_EVAL_CACHE"] = str(Path(tmp) / "cache")  # cold: nothing cached
        for name in ("cold", "warm"):
            seconds, stats = run(Path(tmp) / "out", args.threads)
            rows = breakdown(seconds, stats)
            fill = next(r["seconds"] for r in rows if r["stage"].strip().startswith("forward"))
            writes = next(r["seconds"] for r in rows if "cache writes" in r["stage"])
            fwd = fill - writes  # the forward passes, as the main thread waited for them
            run_info = dict(seconds=seconds, stages=rows)
            if name == "cold" and fwd > 0:
                run_info["forward_gflops"] = flops / fwd / 1e9
                run_info["images_per_s"] = images / fwd
            report["runs"][name] = run_info
    peaks += [matmul_gflops(torch.float32) for _ in range(3)]
    peak = max(peaks)
    report["matmul_peak_gflops_float32"] = peak
    for r in report["runs"].values():
        if "forward_gflops" in r:
            r["forward_share_of_peak"] = r["forward_gflops"] / peak
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"float32 matmul peak (2048^3, {args.threads} threads, best of 6): {peak:.0f} GFLOP/s")
    for name, r in report["runs"].items():
        print(f"\n{name} caches: {r['seconds']:.1f} s")
        for s in r["stages"]:
            print(f"  {s['stage']:<40} {s['seconds']:7.1f} s  {100 * s['share']:5.1f}%")
        if "forward_gflops" in r:
            print(
                f"  extraction forward: {r['images_per_s']:.0f} images/s, "
                f"{r['forward_gflops']:.0f} GFLOP/s = {100 * r['forward_share_of_peak']:.0f}% "
                "of the matmul peak"
            )
    print("* every call, the pixel controls' included (they read the dataset and run L-BFGS)")
    print(f"\n-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
