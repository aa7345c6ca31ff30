"""All-layer pooled feature extraction: igpt-eval vs Hugging Face ImageGPT, same weights.

Both sides compute the paper's features for every layer (block l's ``ln_1`` output, and
``ln_f`` for the last, averaged over positions) on the same batch of tokens:

- ours: ``IGPT.features(tokens)`` (SDPA attention, stops at the last layer, pools on the fly);
- reference: ``ImageGPTModel(output_hidden_states=True)`` on ``[sos] + tokens[:-1]``, then
  each block's ``ln_1`` applied to its hidden state and a mean over positions.

The features of the two are checked to agree before anything is timed. Achieved GFLOP/s is
reported against a plain matmul measured in the same run (causal attention counted as
the lower triangle only).

    python benchmarks/forward.py                  # the `mini` preset (28×28, d=128, 8 layers)
    python benchmarks/forward.py --preset S --n-px 16 --batch 8

Writes ``benchmarks/results/forward.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from common import matmul_gflops, timeit

from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.hf import hf_config, hf_state_dict
from igpt_eval.model.igpt import IGPT


def feature_flops(cfg: IGPTConfig, batch: int) -> float:
    """Useful forward FLOPs of all blocks (no logits) for ``batch`` images."""
    return batch * cfg.n_positions * cfg.flops_per_token(head=False)


def hf_reference(model: IGPT):
    """An HF ``ImageGPTModel`` holding the same weights, dropout off."""
    import transformers

    hf_cfg = transformers.ImageGPTConfig(**hf_config(model.config))
    ref = transformers.ImageGPTModel(hf_cfg).eval()
    sd = {k.removeprefix("transformer."): v for k, v in hf_state_dict(model).items()}
    sd.pop("lm_head.weight")
    ref.load_state_dict(sd, strict=False)
    return ref


def hf_features(ref, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's pooled features through HF: ln_1 of each hidden state, ln_f last."""
    x = torch.cat([torch.full((tokens.shape[0], 1), k), tokens[:, :-1]], 1)
    hs = ref(x, output_hidden_states=True).hidden_states
    pooled = [blk.ln_1(h).mean(1) for blk, h in zip(ref.h, hs[:-1], strict=True)]
    return torch.stack(pooled + [hs[-1].mean(1)]).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--n-px", type=int, default=None, help="override the preset's image side")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/forward.json")
    args = ap.parse_args()

    overrides = {"n_px": args.n_px} if args.n_px else {}
    cfg = IGPTConfig.preset(args.preset, **overrides)
    torch.manual_seed(0)
    model = IGPT(cfg).eval()
    with torch.no_grad():  # random, non-trivial weights (the zero head is unused here)
        for p in model.parameters():
            p.normal_(std=0.05)
    ref = hf_reference(model)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, cfg.n_positions), generator=g)

    with torch.no_grad():
        ours = model.features(tokens)
        theirs = hf_features(ref, tokens, cfg.vocab_size)
        err_f32 = (ours - theirs).abs().max().item()
        ours_bf16 = model.features(tokens, autocast=torch.bfloat16)
        err_bf16 = ((ours_bf16 - theirs).abs().max() / theirs.abs().max()).item()
    assert err_f32 < 1e-4, f"features disagree with HF (max abs diff {err_f32})"

    flops = feature_flops(cfg, args.batch)
    peak32, peak16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    rows = {}
    with torch.no_grad():

        def hf_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                hf_features(ref, tokens, cfg.vocab_size)

        runs = {
            "hf float32": (lambda: hf_features(ref, tokens, cfg.vocab_size), peak32),
            "hf bf16 autocast": (hf_bf16, peak16),
            "ours float32": (lambda: model.features(tokens), peak32),
            "ours bf16 autocast": (lambda: model.features(tokens, autocast=torch.bfloat16), peak16),
        }
        for name, (fn, peak) in runs.items():
            s = timeit(fn, args.repeats)
            gf = flops / s / 1e9
            rows[name] = {
                "seconds": s,
                "images_per_s": args.batch / s,
                "gflops": gf,
                "fraction_of_matmul_peak": gf / peak,
            }
    base = rows["hf float32"]["seconds"]
    for r in rows.values():
        r["speedup_vs_hf_float32"] = base / r["seconds"]
    rows["ours bf16 autocast"]["speedup_vs_hf_bf16"] = (
        rows["hf bf16 autocast"]["seconds"] / rows["ours bf16 autocast"]["seconds"]
    )

    result = {
        "benchmark": "forward: all-layer pooled features",
        "config": cfg.to_dict(),
        "batch": args.batch,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "matmul_peak_gflops": {"float32": peak32, "bf16": peak16},
        "max_abs_diff_vs_hf_float32": err_f32,
        "max_rel_diff_bf16_vs_hf": err_bf16,
        "runs": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"preset {args.preset}: n_px={cfg.n_px} d={cfg.n_embd} layers={cfg.n_layer} "
        f"batch={args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"matmul peak: {peak32:.0f} GFLOP/s float32, {peak16:.0f} GFLOP/s bf16; "
        f"features agree with HF to {err_f32:.1e} (float32)"
    )
    print(f"{'run':<20} {'img/s':>8} {'GFLOP/s':>8} {'% peak':>7} {'vs HF f32':>10}")
    for name, r in rows.items():
        print(
            f"{name:<20} {r['images_per_s']:8.1f} {r['gflops']:8.1f} "
            f"{100 * r['fraction_of_matmul_peak']:6.0f}% {r['speedup_vs_hf_float32']:9.2f}x"
        )
    print(f"ours bf16 vs HF bf16 autocast: {rows['ours bf16 autocast']['speedup_vs_hf_bf16']:.2f}x")


if __name__ == "__main__":
    main()
