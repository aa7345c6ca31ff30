"""Training throughput: igpt-eval's trainer vs a plain loop over Hugging Face ImageGPT.

Both sides take the same optimizer steps (Adam, the paper's betas (0.9, 0.95)) from the same
weights on the same batches of random palette ids, in float32 and with bf16 autocast:

- ours: ``Trainer.train_step()`` of :mod:`igpt_eval.train.pretrain` (the real training step: batch
  read from a uint16 token array, loss, backward, Adam, learning-rate schedule);
- reference: ``ImageGPTForCausalImageModeling`` (dropout 0) on ``[sos] + tokens[:-1]``, the
  cross-entropy of its logits against the tokens, ``backward``, ``torch.optim.Adam``.

Before timing, the losses are checked to agree on the same weights and batch: to 1e-5 in
float32, through our inference path and our training path (fused ops), and within bf16
rounding in bf16. Steps of the two are interleaved, so that both see the same machine load,
and the speed-up is the median over neighbouring pairs of steps (its range is printed). Both
run with freed memory kept in the process (``igpt_eval.train.malloc``, as ``pretrain`` runs).

Model FLOPs utilisation counts the matmuls a training step does: per token, forward
``2·(12·L·d² + d·k)`` for the linear layers and head plus ``4·L·T·d`` for attention scores and
values, halved for causal attention (only the lower triangle is useful work); training
``= 3 × forward`` (the backward pass costs two forwards). It is reported against a plain
square matmul measured in the same run.

    python benchmarks/train_step.py                     # preset mini: 16×16, d=128, 8 layers
    python benchmarks/train_step.py --n-px 32 --batch 8 \
        --out benchmarks/results/train_step_32px.json   # the paper's 32×32 (T = 1024)

Writes ``benchmarks/results/train_step.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import matmul_gflops

from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.hf import hf_config, hf_state_dict
from igpt_eval.model.igpt import IGPT
from igpt_eval.train.malloc import keep_freed_memory
from igpt_eval.train.pretrain import TrainConfig, Trainer
from igpt_eval.train.sampling import batch_rows

BETAS = (0.9, 0.95)
LR = 1e-4


def train_flops_per_token(cfg: IGPTConfig) -> float:
    """Matmul FLOPs of one training step per token: 3 × forward (see the module docstring)."""
    return cfg.flops_per_token(training=True)


def hf_reference(model: IGPT):
    """An HF ``ImageGPTForCausalImageModeling`` holding our weights, dropout off."""
    import transformers

    hf_cfg = transformers.ImageGPTConfig(**hf_config(model.config))
    ref = transformers.ImageGPTForCausalImageModeling(hf_cfg)
    missing, unexpected = ref.load_state_dict(hf_state_dict(model), strict=False)
    # Only non-persistent buffers (the causal mask) may be left to HF's own init.
    assert not unexpected and all(k.endswith("attn.bias") for k in missing), (missing, unexpected)
    return ref.train()


class HFLoop:
    """The plain training loop over the HF model: what a user would write by hand."""

    def __init__(self, ref, tokens: np.ndarray, cfg: IGPTConfig, batch: int, bf16: bool):
        self.ref, self.tokens, self.cfg, self.batch, self.bf16 = ref, tokens, cfg, batch, bf16
        self.opt = torch.optim.Adam(ref.parameters(), lr=LR, betas=BETAS, eps=1e-8)
        self.step = 0

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        sos = torch.full((x.shape[0], 1), self.cfg.vocab_size)  # HF's SOS is id k
        inp = torch.cat([sos, x[:, :-1]], 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.ref(input_ids=inp, use_cache=False).logits  # (B, T, k)
        return F.cross_entropy(logits.flatten(0, 1).float(), x.flatten())

    def train_step(self) -> float:
        rows = batch_rows(self.step, len(self.tokens), self.batch, seed=0)
        x = torch.from_numpy(self.tokens[rows].astype(np.int64))
        loss = self.loss(x)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return loss.item()


def time_interleaved(fns: dict, steps: int) -> dict[str, list[float]]:
    """Seconds of each call of each function, calls interleaved (so that both see the same
    machine load), after two warm-up calls each."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--n-px", type=int, default=None, help="override the preset's image side")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run")
    ap.add_argument("--out", default="benchmarks/results/train_step.json")
    args = ap.parse_args()

    overrides = {"n_px": args.n_px} if args.n_px else {}
    cfg = IGPTConfig.preset(args.preset, **overrides)
    T, B = cfg.n_positions, args.batch
    g = np.random.default_rng(0)
    # Enough rows that no timed step wraps into a second epoch.
    tokens = g.integers(0, cfg.vocab_size, (B * (args.steps + 2), T)).astype(np.uint16)

    def fresh_model() -> IGPT:
        torch.manual_seed(0)
        model = IGPT(cfg)
        with torch.no_grad():  # a non-zero head, so the loss check is not trivially ln k
            model.wtet.weight.normal_(std=0.02)
        return model

    # Both loops run with freed memory kept in the process (see igpt_eval.train.malloc), as the
    # pretrain command runs: without it both lose 15-20% to page faults, and their timings
    # to the kernel's mood.
    keep_freed_memory()

    # Correctness first: the same loss from the same weights on the same batch, through the
    # inference path and through the training path (autograd on: fused ops, blocked attention).
    model = fresh_model()
    ref = hf_reference(model)
    x = torch.from_numpy(tokens[batch_rows(0, len(tokens), B, seed=0)].astype(np.int64))
    losses = {}
    for precision, bf16 in (("float32", False), ("bf16", True)):
        hf = HFLoop(ref, tokens, cfg, B, bf16=bf16)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            train_path = model.loss(x).item()
            with torch.no_grad():
                infer_path = model.loss(x).item()
        with torch.no_grad():
            losses[precision] = {
                "hf": hf.loss(x).item(),
                "ours": infer_path,
                "ours_train": train_path,
            }
    l32 = losses["float32"]
    loss_diff = max(abs(l32["ours"] - l32["hf"]), abs(l32["ours_train"] - l32["hf"]))
    assert loss_diff < 1e-5, f"float32 losses disagree: {l32}"
    lbf = losses["bf16"]
    bf16_diff = abs(lbf["ours_train"] - lbf["hf"])
    assert bf16_diff < 2e-2, f"bf16 losses disagree beyond bf16 rounding: {lbf}"

    n_params = model.n_params()
    flops_step = train_flops_per_token(cfg) * B * T
    peaks = {"float32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision, bf16 in (("float32", False), ("bf16", True)):
            model = fresh_model()
            hf = HFLoop(hf_reference(model), tokens, cfg, B, bf16)
            tc = TrainConfig(steps=10**6, batch_size=B, lr=LR, betas=BETAS, bf16=bf16)
            ours = Trainer(model, tokens, tokens[:B], tc, Path(tmp))
            times = time_interleaved(
                {f"hf {precision}": hf.train_step, f"ours {precision}": ours.train_step},
                args.steps,
            )
            for name, t in times.items():
                s = statistics.median(t)
                gf = flops_step / s / 1e9
                rows[name] = {
                    "seconds_per_step": s,
                    "tokens_per_s": B * T / s,
                    "images_per_s": B / s,
                    "gflops": gf,
                    "mfu_vs_matmul_peak": gf / peaks[precision],
                }
            # Each HF step over the ours step timed right after it: the ratio of neighbours
            # cancels the slow drifts of a shared machine; report their median and range.
            hf_t, ours_t = times[f"hf {precision}"], times[f"ours {precision}"]
            pairs = [h / o for h, o in zip(hf_t, ours_t, strict=True)]
            rows[f"ours {precision}"]["speedup_vs_hf"] = statistics.median(pairs)
            rows[f"ours {precision}"]["speedup_range"] = [min(pairs), max(pairs)]

    result = {
        "benchmark": "train_step: one optimizer step (forward, backward, Adam)",
        "config": cfg.to_dict(),
        "n_params": n_params,
        "batch": B,
        "timed_steps": args.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "flops_formula": "per token: 3 * (2*(12*L*d^2 + d*k) + 4*L*T*d * (1/2 if causal))",
        "train_flops_per_token": train_flops_per_token(cfg),
        "matmul_peak_gflops": peaks,
        "losses_first_batch": losses,
        "loss_abs_diff_float32": loss_diff,
        "loss_abs_diff_bf16_train_vs_hf": bf16_diff,
        "runs": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"preset {args.preset}: n_px={cfg.n_px} d={cfg.n_embd} layers={cfg.n_layer} "
        f"({n_params:,} params), batch {B}, {args.steps} timed steps, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"matmul peak: {peaks['float32']:.0f} GFLOP/s float32, {peaks['bf16']:.0f} GFLOP/s bf16; "
        f"losses agree to {loss_diff:.1e} (float32), {bf16_diff:.1e} (bf16); "
        f"{train_flops_per_token(cfg) / 1e6:.2f} MFLOP per training token"
    )
    print(f"{'run':<14} {'tokens/s':>9} {'img/s':>7} {'GFLOP/s':>8} {'MFU':>5} {'vs HF':>17}")
    for name, r in rows.items():
        speed = f"{'1.00x':>17}"
        if "speedup_vs_hf" in r:
            lo, hi = r["speedup_range"]
            speed = f"{r['speedup_vs_hf']:6.2f}x ({lo:.2f}-{hi:.2f})"
        print(
            f"{name:<14} {r['tokens_per_s']:9.0f} {r['images_per_s']:7.1f} {r['gflops']:8.1f} "
            f"{100 * r['mfu_vs_matmul_peak']:4.0f}% {speed}"
        )


if __name__ == "__main__":
    main()
