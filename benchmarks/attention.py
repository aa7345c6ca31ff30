"""CPU attention for training at the shipped models' shape: PyTorch's SDPA vs our blocked
bf16 attention (``igpt_eval.model.ops``, the path a bf16 training step takes).

    python benchmarks/attention.py [--batch 32 --heads 4 --seq 256 --head-dim 32]

Times forward+backward of causal self-attention from packed ``q|k|v`` projections
``(B, T, 3C)`` to ``(B, T, C)``, as the model calls it: SDPA in float32, SDPA in bf16, and the
blocked kernel in bf16. Variants are interleaved, one call each in turn, and the median is
reported, so that all see the same machine load. Before timing, the bf16 outputs and input
gradients are compared with float32 SDPA (largest error relative to the largest value).
Writes ``benchmarks/results/attention.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from igpt_eval.model import ops
from igpt_eval.train.malloc import keep_freed_memory


def blocked(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """Our training path (autograd on, CPU, bf16)."""
    return ops.self_attention(qkv, n_head, causal=True)


def sdpa(qkv: torch.Tensor, n_head: int) -> torch.Tensor:
    """PyTorch's SDPA (causal): the model's literal path."""
    return ops.sdpa_attention(qkv, n_head, causal=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/attention.json"))
    a = ap.parse_args()
    keep_freed_memory()  # as the pretrain command runs
    B, H, T, hd = a.batch, a.heads, a.seq, a.head_dim
    g = torch.Generator().manual_seed(0)
    qkv32 = torch.randn(B, T, 3 * H * hd, generator=g)
    dy32 = torch.randn(B, T, H * hd, generator=g)
    variants = {
        "sdpa float32": (sdpa, torch.float32),
        "sdpa bf16": (sdpa, torch.bfloat16),
        "ours bf16 (blocked)": (blocked, torch.bfloat16),
    }

    def run(fn, dtype):
        x = qkv32.to(dtype).detach().requires_grad_()
        y = fn(x, H)
        y.backward(dy32.to(dtype))
        return y.detach().float(), x.grad.float()

    y_ref, dx_ref = run(sdpa, torch.float32)
    results = {}
    for name, (fn, dtype) in variants.items():
        y, dx = run(fn, dtype)
        results[name] = {
            "max_rel_err_out": ((y - y_ref).abs().max() / y_ref.abs().max()).item(),
            "max_rel_err_grad": ((dx - dx_ref).abs().max() / dx_ref.abs().max()).item(),
            "times": [],
        }
    for _ in range(a.repeats):
        for name, (fn, dtype) in variants.items():
            t0 = time.perf_counter()
            run(fn, dtype)
            results[name]["times"].append(time.perf_counter() - t0)
    base = statistics.median(results["sdpa bf16"]["times"])
    print(f"B={B} H={H} T={T} hd={hd}, causal, {torch.get_num_threads()} threads")
    print(f"{'variant':<22} {'fwd+bwd ms':>10} {'vs sdpa bf16':>13} {'err out':>8} {'err grad':>8}")
    for name, r in results.items():
        r["forward_backward_ms"] = 1000 * statistics.median(r.pop("times"))
        r["speedup_vs_sdpa_bf16"] = 1000 * base / r["forward_backward_ms"]
        print(
            f"{name:<22} {r['forward_backward_ms']:10.1f} {r['speedup_vs_sdpa_bf16']:12.2f}x "
            f"{r['max_rel_err_out']:8.1e} {r['max_rel_err_grad']:8.1e}"
        )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"shape": [B, H, T, hd], "threads": torch.get_num_threads(), **results}
    a.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
