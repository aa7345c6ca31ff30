"""One device check on a CUDA GPU: extraction vs HF, probe solvers, pretraining MFU.

Three parts, each timed on its own and recorded even when another fails:

1. ``features``: all-layer pooled features (every block's ``ln_1``, ``ln_f`` last) of
   random-weight iGPT-S, ours through :func:`igpt_eval.cache.write_cache` (the real extraction
   path, end to end into a cache folder) against Hugging Face ``ImageGPTModel`` holding the
   same weights, both under bf16 autocast; images/s, the ratio, and how far the two sides'
   features lie apart on the same first batch (bf16, and float32 on a smaller one).
2. ``probe``: the linear-probe protocol (:func:`igpt_eval.probes.probe_lbfgs`) on the same
   synthetic class-structured features: torch L-BFGS on the GPU for every layer, and torch
   against scikit-learn (all CPU cores) on the same few layers; seconds, the ratio, and the
   test-accuracy gap torch - sklearn per layer. It runs last, as its scikit-learn side is the
   hardest to predict: layers are run one by one until its deadline.
3. ``pretrain``: ``Trainer.train_step`` (Adam, bf16 autocast) at the iGPT-S shape on random
   tokens; tokens/s, step time, peak GPU memory, and model FLOPs utilisation against a bf16
   matmul measured in the same run.

``--smoke`` runs the same code on the CPU in float32 at tiny sizes in seconds (the test
suite runs it), so the one GPU run cannot fail on a typo.

    PYTHONPATH=. python3 benchmarks/gpu_check.py                 # needs CUDA, ~6 minutes
    PYTHONPATH=. python3 benchmarks/gpu_check.py --smoke --out /tmp/gpu_check.json

Writes ``benchmarks/results/gpu_check.json`` after every part, and prints a line per step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import timeit  # noqa: E402
from forward import hf_reference  # noqa: E402

from igpt_eval.cache import ExtractSettings, write_cache  # noqa: E402
from igpt_eval.model.config import IGPTConfig  # noqa: E402
from igpt_eval.model.igpt import IGPT  # noqa: E402
from igpt_eval.probes import Features, Protocol, probe_lbfgs  # noqa: E402
from igpt_eval.train.pretrain import TrainConfig, Trainer  # noqa: E402

# Sizes of the GPU run and of the smoke run (the only difference between the two).
SIZES = {
    "gpu": dict(
        preset="S", overrides=dict(n_px=32, vocab_size=512),
        feat_batch=128, feat_target_s=20.0, feat_max_n=16384, feat_min_batches=4, f32_rows=32,
        probe_layers=25, probe_dim=512, probe_n=(5000, 2000, 5000), probe_subset=(0, 6, 12, 18, 24),
        sklearn_s=150.0, train_batch=32, train_warmup=3, train_steps=20, matmul_n=8192,
    ),
    "smoke": dict(
        preset="tiny", overrides=dict(n_layer=2),
        feat_batch=16, feat_target_s=0.2, feat_max_n=64, feat_min_batches=2, f32_rows=8,
        probe_layers=2, probe_dim=16, probe_n=(200, 200, 200), probe_subset=(0, 1),
        sklearn_s=30.0, train_batch=4, train_warmup=1, train_steps=2, matmul_n=256,
    ),
}  # fmt: skip
N_CLASSES = 10
N_BOOT = 200  # bootstrap resamples per probe (the CIs are not used here; the same for both)
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[gpu_check {time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


class Run:
    """The device, precision, sizes and deadline every part reads."""

    def __init__(self, smoke: bool, budget_s: float):
        self.smoke, self.budget_s = smoke, budget_s
        self.dev = torch.device("cpu" if smoke else "cuda")
        self.amp = None if smoke else torch.bfloat16  # autocast dtype; None = float32
        self.compute = "float32" if smoke else "bfloat16"  # write_cache's name for it
        self.s = SIZES["smoke" if smoke else "gpu"]

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - T0)

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn):
        """(result, seconds) of ``fn()``, the device synchronised on both sides."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - t0

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dev.type, dtype=self.amp)

    def model(self) -> IGPT:
        cfg = IGPTConfig.preset(self.s["preset"], **self.s["overrides"])
        return IGPT.initialised(cfg, 0).to(self.dev).eval()


# ----------------------------------------------------------------------------- 1. features
def hf_pooled(ref, tokens: torch.Tensor, k: int) -> torch.Tensor:
    """(L+1, B, d) float32 through HF on ``[sos] + tokens[:-1]`` (as ``forward.hf_features``,
    on the tokens' device, pooled in float32 as ours is)."""
    sos = torch.full((tokens.shape[0], 1), k, dtype=tokens.dtype, device=tokens.device)
    x = torch.cat([sos, tokens[:, :-1]], 1)
    hs = ref(x, output_hidden_states=True, use_cache=False).hidden_states
    pooled = [
        blk.ln_1(h).mean(1, dtype=torch.float32) for blk, h in zip(ref.h, hs[:-1], strict=True)
    ]
    return torch.stack(pooled + [hs[-1].mean(1, dtype=torch.float32)])


def rel_diff(a, b) -> float:
    """max over layers of max |a - b| / max |b| (arrays or tensors (L, B, d))."""
    a, b = (torch.as_tensor(v).cpu().double() for v in (a, b))
    return float(((a - b).abs().amax((1, 2)) / b.abs().amax((1, 2))).max())


def part_features(run: Run) -> dict:
    s, B = run.s, run.s["feat_batch"]
    model = run.model()
    cfg, k = model.config, model.config.vocab_size
    ref = hf_reference(model).to(run.dev).eval()  # the same weights, dropout off
    say(f"features: {cfg.n_layer + 1} sites, d={cfg.n_embd}, T={cfg.n_positions}, batch {B}")
    rng = np.random.default_rng(0)
    first = torch.from_numpy(rng.integers(0, k, (B, cfg.n_positions))).to(run.dev)

    def ours_batch():
        return model.features(first, None, "ln_1", n_masks=0, autocast=run.amp)

    def hf_batch():
        with torch.no_grad(), run.autocast():
            return hf_pooled(ref, first, k)

    ours_f, _ = run.timed(ours_batch)  # warm-up; these two are compared
    hf_f, _ = run.timed(hf_batch)
    _, t_ours = run.timed(ours_batch)
    _, t_hf = run.timed(hf_batch)
    say(f"features: one batch {t_ours * 1e3:.1f} ms ours, {t_hf * 1e3:.1f} ms HF")
    m = s["f32_rows"]  # float32 on both sides: what is left is not bf16 rounding
    with torch.no_grad():
        f32 = rel_diff(model.features(first[:m], n_masks=0), hf_pooled(ref, first[:m], k))

    target = min(s["feat_target_s"], run.left() / 8)
    n_batches = int(
        min(s["feat_max_n"] // B, max(s["feat_min_batches"], target / max(t_ours, t_hf)))
    )
    n = n_batches * B
    tokens = np.concatenate(
        [first.cpu().numpy(), rng.integers(0, k, (n - B, cfg.n_positions))]
    ).astype(np.uint16)
    say(f"features: timing {n} images per side")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        cache, t_cache = run.timed(
            lambda: write_cache(
                model, tokens, np.zeros(n, np.int64), Path(tmp) / "cache",
                ExtractSettings(batch_size=B, compute=run.compute),
            )
        )  # fmt: skip
        cached = np.stack([np.asarray(a[:B]) for _, a in cache])
        theirs = np.empty((cfg.n_layer + 1, n, cfg.n_embd), np.float32)

        def hf_all():
            with torch.no_grad(), run.autocast():
                for lo in range(0, n, B):
                    x = torch.from_numpy(tokens[lo : lo + B].astype(np.int64)).to(run.dev)
                    theirs[:, lo : lo + B] = hf_pooled(ref, x, k).cpu().numpy()

        _, t_hf_all = run.timed(hf_all)
    out = {
        "config": cfg.to_dict(),
        "n_images": n,
        "batch": B,
        "compute": run.compute,
        "timed": "ours: write_cache into a cache folder (files, manifest, checksums); "
        "HF: the same pooled features copied into host memory",
        "ours_write_cache_images_per_s": n / t_cache,
        "hf_images_per_s": n / t_hf_all,
        "ratio_ours_over_hf": t_hf_all / t_cache,
        "one_batch_ms": {"ours_features": 1e3 * t_ours, "hf": 1e3 * t_hf},
        "one_batch_ratio_ours_over_hf": t_hf / t_ours,
        "max_rel_diff_vs_hf": rel_diff(ours_f, hf_f),
        "max_rel_diff_cache_vs_hf": rel_diff(cached, theirs[:, :B]),
        "max_rel_diff_vs_hf_float32": f32,
    }
    say(
        f"features: ours {out['ours_write_cache_images_per_s']:.0f} img/s (write_cache), HF "
        f"{out['hf_images_per_s']:.0f} img/s: {out['ratio_ours_over_hf']:.2f}x; rel diff "
        f"{out['max_rel_diff_vs_hf']:.1e} ({run.compute}), {f32:.1e} (float32)"
    )
    return out


# ----------------------------------------------------------------------------- 2. probes
def synthetic(run: Run) -> tuple[Features, Features, Features]:
    """Class means plus unit noise; the separation of the class means (in noise standard
    deviations) rises and falls over the layers, as a probe's accuracy does over depth
    (1σ at the first layer, 4σ at two thirds of the depth)."""
    G, d = run.s["probe_layers"], run.s["probe_dim"]
    rng = np.random.default_rng(0)
    means = rng.standard_normal((N_CLASSES, d)).astype(np.float32)
    depth = np.arange(G) / max(G - 1, 1)
    sep = 1.0 + 3.0 * np.exp(-(((depth - 2 / 3) / 0.3) ** 2))  # best at 2/3 of the depth
    scale = (sep / math.sqrt(2 * d)).astype(np.float32)
    splits = []
    for n in run.s["probe_n"]:
        y = rng.permutation(np.arange(n) % N_CLASSES)
        X = rng.standard_normal((G, n, d), dtype=np.float32)
        X += scale[:, None, None] * means[y][None]
        splits.append(Features(X, y))
    return tuple(splits)


def accuracy_by_layer(rows: list[dict]) -> dict[int, float]:
    return {
        r["layer"]: r["value"] for r in rows if r["split"] == "test" and r["metric"] == "accuracy"
    }


def threadpools() -> list[str]:
    """The BLAS and OpenMP thread pools in this process (scikit-learn's threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [f"{i['internal_api']} x{i['num_threads']}" for i in threadpool_info()]


def part_probe(run: Run) -> dict:
    tr, va, te = synthetic(run)
    G = tr.X.shape[0]
    meta = dict(model="synthetic", objective="ar", dataset="synthetic", site_kind="ln_1")

    def probe(layers, backend, device):
        pick = lambda f: Features(f.X[layers], f.y)  # noqa: E731
        sites = [f"layer{g}" for g in layers]
        return run.timed(
            lambda: probe_lbfgs(
                pick(tr), pick(va), pick(te), list(layers), meta=meta, sites=sites,
                protocol=Protocol(backend=backend, device=device, n_boot=N_BOOT),
            ).rows
        )  # fmt: skip

    say(f"probe: torch on {run.dev.type}, {G} layers, d={tr.X.shape[2]}, n={run.s['probe_n']}")
    rows_all, t_all = probe(list(range(G)), "torch", str(run.dev))
    say(f"probe: torch, {G} layers: {t_all:.1f} s")
    deadline = time.perf_counter() + min(run.s["sklearn_s"], run.left() - 20)
    sk_rows, t_sk, t, done = [], 0.0, 0.0, []
    for g in run.s["probe_subset"]:  # one by one, while the next one should fit the deadline
        if done and time.perf_counter() + t > deadline:
            break
        rows, t = probe([g], "sklearn", "cpu")
        sk_rows, t_sk, done = sk_rows + rows, t_sk + t, done + [g]
        say(f"probe: sklearn, layer {g}: {t:.1f} s")
    torch_rows, t_torch = probe(done, "torch", str(run.dev))
    say(f"probe: torch, layers {done}: {t_torch:.2f} s; sklearn {t_sk:.1f} s")
    a, b = accuracy_by_layer(torch_rows), accuracy_by_layer(sk_rows)
    iters = lambda rows: sum(r["n_iter"] for r in rows if r["metric"] == "accuracy")  # noqa: E731
    return {
        "n_layers": G,
        "dim": tr.X.shape[2],
        "n_train_val_test": list(run.s["probe_n"]),
        "n_classes": N_CLASSES,
        "torch_device": str(run.dev),
        "torch_all_layers_s": t_all,
        "torch_all_layers_test_accuracy": [accuracy_by_layer(rows_all)[g] for g in range(G)],
        "subset_layers": done,
        "subset_skipped_for_deadline": [g for g in run.s["probe_subset"] if g not in done],
        "subset_torch_s": t_torch,
        "subset_sklearn_s": t_sk,
        "ratio_sklearn_over_torch": t_sk / t_torch,
        "subset_iterations": {"torch": iters(torch_rows), "sklearn": iters(sk_rows)},
        "test_accuracy_gap_pp": {str(g): 100 * (a[g] - b[g]) for g in done},
        "cpu_threads": torch.get_num_threads(),
        "cpu_threadpools": threadpools(),
    }


# ----------------------------------------------------------------------------- 3. pretrain
def matmul_peak_gflops(run: Run, n: int, repeats: int = 10) -> float:
    """``common.matmul_gflops`` on the run's device (that one runs on the CPU)."""
    dtype = run.amp or torch.float32
    a, b = (torch.randn(n, n, device=run.dev, dtype=dtype) for _ in range(2))

    def mm():
        a @ b
        run.sync()

    return 2 * n**3 / timeit(mm, repeats) / 1e9


def part_pretrain(run: Run) -> dict:
    s, B = run.s, run.s["train_batch"]
    peak = matmul_peak_gflops(run, s["matmul_n"])
    say(f"pretrain: matmul peak {peak:.0f} GFLOP/s ({run.compute}, n={s['matmul_n']})")
    model = run.model().train()
    cfg, T = model.config, model.config.n_positions
    steps = s["train_warmup"] + s["train_steps"]
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (B * steps, T)).astype(np.uint16)
    if run.dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tc = TrainConfig(
            steps=10**6, batch_size=B, lr=1e-4, bf16=bool(run.amp), device=str(run.dev)
        )
        trainer = Trainer(model, tokens, tokens[:B], tc, Path(tmp))
        losses = [trainer.train_step() for _ in range(s["train_warmup"])]
        timed, seconds = run.timed(lambda: [trainer.train_step() for _ in range(s["train_steps"])])
    losses += timed
    step_s = seconds / s["train_steps"]
    flops = cfg.flops_per_token(training=True)
    tok_s = B * T / step_s
    mem = torch.cuda.max_memory_allocated() / 2**30 if run.dev.type == "cuda" else None
    out = {
        "config": cfg.to_dict(),
        "batch": B,
        "timed_steps": s["train_steps"],
        "warmup_steps": s["train_warmup"],
        "compute": run.compute,
        "step_s": step_s,
        "tokens_per_s": tok_s,
        "images_per_s": B / step_s,
        "train_flops_per_token": flops,
        "model_tflops": flops * tok_s / 1e12,
        "matmul_peak_tflops": peak / 1e3,
        "matmul_n": s["matmul_n"],
        "mfu": flops * tok_s / (peak * 1e9),
        "peak_gpu_memory_gib": mem,
        "loss_first_last": [losses[0], losses[-1]],
    }
    say(f"pretrain: {tok_s:.0f} tokens/s, {1e3 * step_s:.1f} ms/step, MFU {100 * out['mfu']:.1f}%")
    return out


# ----------------------------------------------------------------------------- main
PARTS = {"features": part_features, "pretrain": part_pretrain, "probe": part_probe}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, float32")
    ap.add_argument("--out", default="benchmarks/results/gpu_check.json")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip parts past this")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit(f"gpu_check: no CUDA device visible to torch {torch.__version__}; use --smoke")
    run = Run(args.smoke, args.budget_s)
    result = {
        "benchmark": "gpu_check: extraction vs HF, probe solvers, pretraining MFU",
        "smoke": args.smoke,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if run.dev.type == "cuda" else "cpu",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "budget_s": args.budget_s,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result.pop("wall_s", None)  # last in the file
        result["wall_s"] = time.perf_counter() - T0
        out.write_text(json.dumps(result, indent=2, default=float) + "\n")

    for name, part in PARTS.items():
        if run.left() <= 0:
            result[name] = {"skipped": "budget"}
            say(f"{name}: skipped (budget)")
        else:
            t0 = time.perf_counter()
            try:
                result[name] = part(run)
            except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
                traceback.print_exc()
                result[name] = {"error": f"{type(e).__name__}: {e}"}
                say(f"{name}: error {type(e).__name__}: {e}")
            result[name]["wall_s"] = time.perf_counter() - t0
        save()
    say(f"done: {out}")
    print(json.dumps(result, indent=2, default=float), flush=True)
    sys.exit(1 if any("error" in result[p] for p in PARTS) else 0)


if __name__ == "__main__":
    main()
