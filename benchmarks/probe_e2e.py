"""The main job's probe sweep end to end: the torch backend vs scikit-learn, same caches.

Runs :func:`igpt_eval.studies.probe.probe_model` on the default model and sample (every
layer: the C path, its refinement, the refit on train + val and the test scores, exactly the
protocol ``igpt-eval probe --all-layers`` runs) once with ``backend="torch"`` and once with
``backend="sklearn"``, on the same activation caches (built first if missing, and not
timed), with the pixel controls left out: they are the same torch code for both. scikit-learn
is allowed to finish: the protocol's cap is 10,000 iterations, and every fit's convergence is
recorded. Reported: each side's wall time, the ratio, and per layer the chosen C and the
test accuracy of both, with their difference in points.

    python benchmarks/probe_e2e.py            # about 20 minutes on a 2-core CPU, mostly sklearn

Writes ``benchmarks/results/probe_e2e.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from igpt_eval.studies.probe import probe_model
from igpt_eval.studies.settings import ProbeSettings

ROOT = Path(__file__).resolve().parents[1]
NO_PIXELS = ProbeSettings(pixels=False, native_pixels=False)  # the models' probes only


def run(backend: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    df = probe_model(settings=NO_PIXELS.replace(backend=backend)).results
    seconds = time.perf_counter() - t0 - df.attrs["extract_seconds"]
    fits = df[df.metric == "accuracy"]
    test = fits[fits.split == "test"].set_index("layer")
    per_layer = {
        int(layer): dict(C=float(r.C), test_accuracy=float(r.value)) for layer, r in test.iterrows()
    }
    return seconds, dict(
        layers=per_layer, fits=len(fits), converged=int(fits.converged.astype(bool).sum())
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/probe_e2e.json")
    args = ap.parse_args()
    # Untimed: builds the caches if missing, and warms the imports and the page cache.
    probe_model(settings=NO_PIXELS)
    sides = {}
    for backend in ("torch", "sklearn"):
        seconds, res = run(backend)
        sides[backend] = dict(seconds=seconds, **res)
        print(f"{backend}: {seconds:.1f} s, {res['converged']} of {res['fits']} fits converged")
    ours, ref = sides["torch"], sides["sklearn"]
    diffs = {
        layer: 100 * (ours["layers"][layer]["test_accuracy"] - r["test_accuracy"])
        for layer, r in ref["layers"].items()
    }
    same_C = [layer for layer, r in ref["layers"].items() if ours["layers"][layer]["C"] == r["C"]]
    ratio = ref["seconds"] / ours["seconds"]
    print(f"torch vs sklearn end to end: {ratio:.1f}x")
    print(f"test accuracy, torch - sklearn (pp): max |diff| {max(map(abs, diffs.values())):.2f}")
    print(f"same C chosen on {len(same_C)} of {len(diffs)} layers")
    for layer, d in diffs.items():
        o, r = ours["layers"][layer], ref["layers"][layer]
        acc = f"{100 * o['test_accuracy']:.2f}% vs {100 * r['test_accuracy']:.2f}%"
        print(f"  layer {layer}: C {o['C']:.3g} vs {r['C']:.3g}, {acc} ({d:+.2f})")
    record = dict(
        benchmark="probe sweep end to end (probe_model, every layer): torch vs sklearn backend",
        threads=torch.get_num_threads(),
        machine=platform.machine(),
        torch=torch.__version__,
        sides=sides,
        ratio=ratio,
        test_accuracy_diff_pp=diffs,
        same_C_layers=same_C,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
