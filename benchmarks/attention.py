"""CPU attention at the shipped models' shape: SDPA in float32, in bf16, and bf16 inputs run
through the float32 kernel (a candidate fix for slow bf16 training, rejected: see below).

    python benchmarks/attention.py [--batch 64 --heads 4 --seq 256 --head-dim 32 --threads 2]

Times ``F.scaled_dot_product_attention`` (causal) forward and forward+backward and prints
milliseconds per call. On this project's idle 2-core machine the three are within 10% of
each other (benchmarks/results/attention.json): an earlier 4x bf16-backward penalty was an
artefact of a shared CPU, so the model keeps plain SDPA under autocast.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _time(fn, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return 1000 * (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/attention.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    shape = (a.batch, a.heads, a.seq, a.head_dim)
    variants = {
        "float32": (torch.float32, False),
        "bf16": (torch.bfloat16, False),
        "bf16 via float32 kernel": (torch.bfloat16, True),
    }
    results = {}
    for name, (dtype, upcast) in variants.items():
        q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))

        def attend(q=q, k=k, v=v, upcast=upcast, dtype=dtype):
            if upcast:
                return F.scaled_dot_product_attention(
                    q.float(), k.float(), v.float(), is_causal=True
                ).to(dtype)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        with torch.inference_mode():
            fwd = _time(attend, a.seconds)
        fwd_bwd = _time(lambda attend=attend: attend().float().sum().backward(), a.seconds)
        results[name] = {"forward_ms": fwd, "forward_backward_ms": fwd_bwd}
        print(f"{name:<24} forward {fwd:7.1f} ms   forward+backward {fwd_bwd:7.1f} ms")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"shape": shape, "threads": a.threads, **results}, indent=2))


if __name__ == "__main__":
    main()
