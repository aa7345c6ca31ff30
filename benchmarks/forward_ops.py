"""Where one extraction worker's forward time goes, op by op, against the matmul peak.

The main job's extraction runs ``cpu_workers`` batches side by side, one thread each, through
``IGPT.features`` (the literal path: ``F.rms_norm``, SDPA, ``h * sigmoid(1.702 h)``). This
times each op of one block on one thread at that shape (batch 16, the shipped model's
16 × 16 × d = 128, causal), on tensors of the block's real shapes, and sets the sum beside:

- the whole pooled forward of all layers (``model.features``), timed the same way;
- the float32 square-matmul peak on one thread (best of three), the denominator of the main
  job's FLOP share;
- what-ifs at the same shape: quick-GELU as one ``silu`` (the training path's fold of 1.702
  into the weights), and attention as our blocked kernel run in float32.

FLOPs are the model's own count (``IGPTConfig.flops_per_token``: matmuls only, causal attention
as the lower triangle), so an op with no matmul FLOPs (norm, GELU, residual, pooling) only
costs time. The ceiling lines say what share of peak the forward could reach if the listed ops
took no time at all.

    python benchmarks/forward_ops.py [--batch 16 --repeats 30]

Writes ``benchmarks/results/forward_ops.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from common import matmul_gflops, timeit

from igpt_eval.model import ops
from igpt_eval.model.blocks import GELU_SLOPE
from igpt_eval.model.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "fmnist-ar"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one extraction worker
    torch.manual_seed(0)

    model = load_model(args.model).eval()
    cfg, blk = model.config, model.blocks[0]
    B, T, C, H = args.batch, cfg.n_positions, cfg.n_embd, cfg.n_head
    N = B * T
    x = torch.randn(B, T, C)  # (B, T, C) residual stream
    qkv = blk.attn.qkv(x)  # (B, T, 3C)
    y = torch.randn(B, T, C)
    h = blk.mlp.fc(x)  # (B, T, 4C)
    causal = cfg.objective == "ar"
    attn_flops = 4 * T * C * (0.5 if causal else 1.0) * N

    # (op, matmul FLOPs per block, callable): one block's literal forward, op by op.
    block_ops = [
        ("ln_1 (rms_norm)", 0, lambda: blk.ln_1(x)),
        ("qkv matmul", 2 * N * C * 3 * C, lambda: blk.attn.qkv(x)),
        ("attention (SDPA)", attn_flops, lambda: ops.sdpa_attention(qkv, H, causal)),
        ("attention proj matmul", 2 * N * C * C, lambda: blk.attn.proj(y)),
        ("residual add", 0, lambda: x + y),
        ("ln_2 (rms_norm)", 0, lambda: blk.ln_2(x)),
        ("fc matmul", 2 * N * C * 4 * C, lambda: blk.mlp.fc(x)),
        ("quick-GELU h*sigmoid(1.702h)", 0, lambda: h * torch.sigmoid(GELU_SLOPE * h)),
        ("mlp proj matmul", 2 * N * 4 * C * C, lambda: blk.mlp.proj(h)),
        ("residual add", 0, lambda: x + y),
        ("pool (mean over T)", 0, lambda: x.mean(1, dtype=torch.float32)),
    ]
    what_ifs = [
        ("quick-GELU as silu (weights folded)", lambda: F.silu(h)),
        (
            "attention, blocked kernel in float32",
            lambda: ops._BlockedAttention.apply(qkv, H, causal),
        ),
    ]
    layers = list(range(cfg.n_layer + 1))
    tokens = torch.randint(0, cfg.vocab_size, (B, T))
    with torch.no_grad():
        rows = []
        for name, flops, fn in block_ops:
            s = timeit(fn, args.repeats)
            rows.append(
                {"op": name, "ms": s * 1e3, "gflop": flops / 1e9, "gflops": flops / s / 1e9}
            )
        extra = [{"op": n, "ms": timeit(fn, args.repeats) * 1e3} for n, fn in what_ifs]
        forward_s = timeit(lambda: model.features(tokens, layers), args.repeats)
    peak = max(matmul_gflops(torch.float32) for _ in range(3))

    block_ms = sum(r["ms"] for r in rows)
    model_flops = cfg.flops_per_token(head=False) * T * B
    achieved = model_flops / forward_s / 1e9
    mm_ms = sum(r["ms"] for r in rows if r["op"].endswith("matmul"))
    attn_ms = sum(r["ms"] for r in rows if r["op"].startswith("attention"))
    rest_ms = block_ms - mm_ms - attn_ms
    per_block_gflop = model_flops / cfg.n_layer / 1e9

    def share(ms: float) -> float:  # share of peak if a block took ``ms``
        return per_block_gflop / (ms / 1e3) / peak

    ceilings = {
        "as measured (sum of ops)": share(block_ms),
        "norms, GELU, adds, pooling free": share(mm_ms + attn_ms),
        "attention and the rest free": share(mm_ms),
        "matmuls at peak, the rest as measured": share(
            sum(r["gflop"] for r in rows if r["op"].endswith("matmul")) / peak * 1e3
            + attn_ms
            + rest_ms
        ),
    }
    print(f"batch {B}, one thread; float32 square-matmul peak {peak:.1f} GFLOP/s\n")
    print(f"{'op (one block)':40s} {'ms':>7s} {'share':>6s} {'GFLOP/s':>8s} {'% peak':>7s}")
    for r in rows:
        rate = f"{r['gflops']:8.1f} {r['gflops'] / peak:7.0%}" if r["gflop"] else f"{'':8s} {'':7s}"
        print(f"{r['op']:40s} {r['ms']:7.2f} {r['ms'] / block_ms:6.0%} {rate}")
    print(f"{'sum':40s} {block_ms:7.2f}")
    print(
        f"\nwhole forward, {cfg.n_layer} blocks + pooling: {forward_s * 1e3:.1f} ms = "
        f"{B / forward_s:.1f} images/s = {achieved:.1f} GFLOP/s, {achieved / peak:.0%} of peak "
        f"(ops summed: {block_ms * cfg.n_layer:.1f} ms)"
    )
    print("\nshare of peak a block reaches:")
    for k, v in ceilings.items():
        print(f"  {k:40s} {v:6.0%}")
    print("\nwhat-ifs (same shape):")
    for e in extra:
        print(f"  {e['op']:40s} {e['ms']:7.2f} ms")

    out = {
        "benchmark": "one extraction worker's forward, op by op (literal path, float32)",
        "model": Path(args.model).name,
        "batch": B,
        "threads": 1,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "matmul_peak_gflops_float32_1thread": peak,
        "ops_one_block": rows,
        "what_ifs": extra,
        "forward_ms": forward_s * 1e3,
        "forward_gflops": achieved,
        "forward_share_of_peak": achieved / peak,
        "ceilings_share_of_peak": ceilings,
    }
    path = ROOT / "benchmarks" / "results" / "forward_ops.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
