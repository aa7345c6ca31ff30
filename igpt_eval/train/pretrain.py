"""Pretraining with the paper's recipe: AR or BERT objective, Adam, warm-up then cosine.

The recipe (Chen et al. 2020, §3): Adam with β1 = 0.9, β2 = 0.95, no weight decay, no
dropout; the learning rate rises linearly for one epoch of warm-up, then decays to 0 at the
last step on a cosine. Warm-up is capped at a third of the steps (:data:`WARMUP_CAP`), so a
run of 3 epochs or more warms up for exactly the paper's one epoch and a short run (a sweep,
a pilot) still spends two thirds of its steps past the warm-up. The learning rate itself is
picked by :func:`~igpt_eval.train.runs.lr_sweep`.

Runs are resumable *exactly*. Every random choice is a pure function of ``(seed, step)``:
the order of images in epoch e is a permutation seeded by ``(seed, e)``, and step s's BERT
masks come from a generator seeded by ``(seed, s)``. A checkpoint therefore needs only the
weights, the optimizer state and the step, and a run killed at any moment and resumed ends
with the same weights, bit for bit on CPU, as one that never stopped.

On disk (``out/``)::

    model.safetensors, config.json, palette.npy   the latest weights: a checkpoint folder
    train_log.csv                                 step, epoch, lr, losses, tokens/s, seconds
    run.json                                      the training settings and data identity
    resume/step-N/                                weights + optimizer (torch.save'd tensors
                                                  only, read back with weights_only=True)
    resume/LATEST                                 the newest complete resume/step-N
    snapshots/step-XXXXXX/                        kept weights of chosen steps (optional):
                                                  a checkpoint folder + snapshot.json

A resume folder is written under a temporary name and renamed into place, and ``LATEST`` is
replaced atomically after it, so a kill during a checkpoint leaves the previous one in use.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.log import progress_bar
from igpt_eval.model import ops
from igpt_eval.model.checkpoint import PALETTE, load_resume, save_model, save_resume, save_snapshot
from igpt_eval.model.igpt import IGPT
from igpt_eval.train import distributed as dist
from igpt_eval.train.sampling import batch_rows, eval_mask_generator, mask_generator

LOG_FIELDS = ["step", "epoch", "lr", "train_loss", "val_loss", "tokens_per_s", "seconds"]


#: The largest share of a run's steps its default warm-up may take. Measured on the shipped
#: AR recipe (mini, batch 64, peak rate 0.003, 300 steps, seed 0): warming up for a third of
#: the steps reached validation loss 0.9365 against 0.9866 for a tenth, the cap before it
#: (README, "Warm-up"). A third is also what one epoch is in a 3-epoch run.
WARMUP_CAP = Fraction(1, 3)  # exact: 2,529 steps cap at 843, one epoch of batch 64


@dataclass
class TrainConfig:
    """How to train. Defaults follow the paper where it says, and a CPU budget where not."""

    steps: int = 1000  # optimizer steps (the paper: 1M at batch 128)
    batch_size: int = 64  # images per optimizer step, summed over processes (paper: 128)
    lr: float = 1e-3  # peak learning rate (pick it with lr_sweep)
    warmup_steps: int | None = None  # None: one epoch (the paper), at most WARMUP_CAP of the steps
    betas: tuple[float, float] = (0.9, 0.95)  # the paper's Adam betas
    grad_accum: int = 1  # micro-batches per step: same result, less memory
    grad_clip: float | None = None  # the paper does not clip; an option for unstable runs
    bf16: bool = False  # bf16 autocast for the forward pass (weights and Adam stay float32)
    compile: bool = False  # torch.compile the model (helps on GPU; slow to start on CPU)
    literal_ops: bool = False  # train on the literal ops, not the CPU training path (model.ops)
    seed: int = 0  # data order, BERT masks and initialisation
    eval_every: int = 200  # steps between validation losses
    eval_images: int = 2000  # validation images scored each time (a fixed subset)
    checkpoint_every: int = 500  # steps between resumable checkpoints
    snapshot_steps: tuple[int, ...] = ()  # steps whose weights are kept (0: the initialisation)
    device: str = "cpu"

    def validate(self, n_train: int) -> None:
        """One clear error for settings that cannot train."""
        if self.steps < 1:
            raise IGPTError(f"steps must be >= 1, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise IGPTError(f"learning rate must be a positive number, got {self.lr}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise IGPTError("batch size and gradient accumulation must be >= 1")
        world = dist.world_size()
        if self.batch_size % (self.grad_accum * world):
            raise IGPTError(
                f"batch size {self.batch_size} must divide evenly into {self.grad_accum} "
                f"micro-batches on each of {world} processes"
            )
        if n_train < self.batch_size:
            raise IGPTError(
                f"the training split has {n_train} images, fewer than one batch of "
                f"{self.batch_size}; use a smaller --batch-size"
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise IGPTError(f"grad clip must be positive, got {self.grad_clip}")
        for name in ("eval_every", "checkpoint_every", "eval_images"):
            if getattr(self, name) < 1:
                raise IGPTError(f"{name} must be >= 1, got {getattr(self, name)}")
        bad = [s for s in self.snapshot_steps if not 0 <= s <= self.steps]
        if bad:
            raise IGPTError(
                f"snapshot steps must lie in 0..{self.steps} (the run's steps), got {bad}"
            )

    def steps_per_epoch(self, n_train: int) -> int:
        """Optimiser steps in one pass over ``n_train`` training images."""
        return n_train // self.batch_size

    def warmup(self, n_train: int) -> int:
        """Warm-up steps on ``n_train`` training images: ``warmup_steps`` if set, else one
        epoch, at most WARMUP_CAP of the run."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, min(self.steps_per_epoch(n_train), int(self.steps * WARMUP_CAP)))


def log_spaced_steps(n: int, steps: int, first_fraction: float = 0.01) -> tuple[int, ...]:
    """``n`` steps spaced evenly in log(step) from ``first_fraction · steps`` up to, but not
    including, the last step, followed by the last step itself (so ``n + 1`` in all, fewer
    when a short run makes some coincide).

    Log spacing because the loss moves fastest early: the paper's Figure 3 needs points
    across orders of magnitude of training, not a dense tail.
    """
    if n < 1:
        raise IGPTError(f"the number of snapshots must be a positive integer, got {n}")
    first = max(1.0, first_fraction * steps)
    grid = np.geomspace(first, steps, n + 1)[:-1] if steps > first else np.array([])
    chosen = {int(round(float(s))) for s in grid}
    return tuple(sorted(s for s in chosen if 1 <= s < steps)) + (steps,)


def lr_at(step: int, cfg: TrainConfig, warmup: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, cosine to 0."""
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step + 1 - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model: IGPT, tokens, batch_size: int = 256) -> float:
    """Mean pretraining loss (nats per token) on ``tokens``; BERT masks from a fixed seed
    (:func:`~igpt_eval.train.sampling.eval_mask_generator`), so values are comparable
    across a run."""
    was_training = model.training
    model.eval()
    g = eval_mask_generator()
    total, count = 0.0, 0
    for s in range(0, len(tokens), batch_size):
        x = torch.from_numpy(np.asarray(tokens[s : s + batch_size], dtype=np.int64))
        mask = None
        if model.config.objective == "bert":
            mask = model.sample_mask(*x.shape, generator=g)
        total += model.loss(x, mask).item() * len(x)
        count += len(x)
    model.train(was_training)
    return total / count


class Trainer:
    """One pretraining run of ``model`` on token arrays (``[N, T]`` uint16, memmaps fine)."""

    def __init__(self, model: IGPT, train_tokens, val_tokens, cfg: TrainConfig, out: Path):
        cfg.validate(len(train_tokens))
        if train_tokens.shape[1] != model.config.n_positions:
            raise IGPTError(
                f"tokens have {train_tokens.shape[1]} positions but the model expects "
                f"{model.config.n_positions} ({model.config.n_px}x{model.config.n_px} px)"
            )
        self.cfg, self.out = cfg, Path(out)
        self.train_tokens, self.val_tokens = train_tokens, val_tokens
        self.model = model.to(cfg.device).train()
        # The fused kernel does the whole Adam update in one pass per tensor (CPU and GPU).
        self.opt = torch.optim.Adam(
            model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-8, fused=True
        )
        self.step = 0
        self.steps_per_epoch = cfg.steps_per_epoch(len(train_tokens))
        self.warmup = cfg.warmup(len(train_tokens))
        self.elapsed = 0.0  # training seconds before this process (for resumed runs)
        self.snapshot_steps = frozenset(cfg.snapshot_steps)
        # The loss as a module's forward, so that DDP and torch.compile can wrap it.
        objective: torch.nn.Module = Objective(model)
        if dist.world_size() > 1:
            objective = dist.wrap(objective)
        self.objective = torch.compile(objective) if cfg.compile else objective

    # ------------------------------------------------------------------ one step
    def train_step(self) -> float:
        """One optimizer step on global batch ``self.step``; returns its mean loss."""
        cfg, model = self.cfg, self.model
        rows = batch_rows(self.step, len(self.train_tokens), cfg.batch_size, cfg.seed)
        x = torch.from_numpy(np.asarray(self.train_tokens[rows], dtype=np.int64))
        mask = None
        if model.config.objective == "bert":  # drawn for the global batch: rank-independent
            mask = model.sample_mask(*x.shape, generator=mask_generator(cfg.seed, self.step))
        # This process's share of the batch, then micro-batches of it.
        x = dist.shard(x)
        mask = dist.shard(mask) if mask is not None else None
        lr = lr_at(self.step, cfg, self.warmup)
        for group in self.opt.param_groups:
            group["lr"] = lr
        total = 0.0
        micro = x.shape[0] // cfg.grad_accum
        for j in range(cfg.grad_accum):
            xs = x[j * micro : (j + 1) * micro].to(cfg.device)
            ms = mask[j * micro : (j + 1) * micro].to(cfg.device) if mask is not None else None
            sync = j == cfg.grad_accum - 1
            with (
                dist.no_sync(self.objective, sync),
                torch.autocast(
                    torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16
                ),
                ops.literal_ops() if cfg.literal_ops else contextlib.nullcontext(),
            ):
                loss = self.objective(xs, ms) / cfg.grad_accum
            loss.backward()
            total += loss.item()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return dist.mean(total)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train to ``cfg.steps``, evaluating, logging and checkpointing on the way."""
        cfg = self.cfg
        main = dist.is_main()
        log = _Log(self.out / "train_log.csv", self.step) if main else None
        T = self.model.config.n_positions
        bar = progress_bar(total=cfg.steps, initial=self.step, desc="pretrain")
        t_start = time.perf_counter()
        last = log.last_val_loss if main else None  # a resumed run reports its last one
        if self.step == 0 and 0 in self.snapshot_steps:  # the untrained network: a control
            last = self.validate()
            if main:
                self.snapshot(
                    {"epoch": 0.0, "lr": 0.0, "train_loss": "", "val_loss": last, "seconds": 0.0}
                )
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            loss = self.train_step()
            if not math.isfinite(loss):
                raise IGPTError(
                    f"training diverged at step {self.step} (loss {loss}); lower the learning rate"
                )
            dt = time.perf_counter() - t0
            row = {
                "step": self.step,
                "epoch": round(self.step / self.steps_per_epoch, 4),
                "lr": lr_at(self.step - 1, cfg, self.warmup),
                "train_loss": loss,
                "val_loss": "",
                "tokens_per_s": round(cfg.batch_size * T / dt, 1),
                "seconds": round(self.elapsed + time.perf_counter() - t_start, 2),
            }
            snapshot = self.step in self.snapshot_steps
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps or snapshot:
                row["val_loss"] = last = self.validate()
            if snapshot and main:
                self.snapshot(row)
            if main:
                log.write(row)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", val=f"{last:.3f}" if last else "-")
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.elapsed += time.perf_counter() - t_start
                t_start = time.perf_counter()
                self.checkpoint()
        bar.close()
        return {"step": self.step, "val_loss": last, "seconds": self.elapsed}

    def validate(self) -> float:
        """Validation loss on the fixed first ``eval_images`` of the validation split."""
        return evaluate(self.model, self.val_tokens[: self.cfg.eval_images])

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> None:
        """Write a resumable checkpoint atomically, then refresh the folder's weights."""
        if not dist.is_main():
            dist.barrier()
            return
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "optimizer": self.opt.state_dict(),
            "train_config": dataclasses.asdict(self.cfg),
        }
        save_resume(self.out, self.step, self.model, state)
        save_model(self.model, self.out)  # the user-facing weights; palette.npy stays as is
        dist.barrier()

    def snapshot(self, row: dict) -> None:
        """Keep this step's weights under ``snapshots/`` with its validation loss."""
        info = {k: row[k] for k in ("epoch", "lr", "train_loss", "val_loss", "seconds")}
        info["tokens_seen"] = self.step * self.cfg.batch_size * self.model.config.n_positions
        save_snapshot(self.out, self.step, self.model, info, self.out / PALETTE)

    def resume(self) -> None:
        """Continue from ``out/resume/LATEST``: weights, optimizer and step."""
        weights, state, ck = load_resume(self.out)
        if state["step"] > self.cfg.steps:
            raise IGPTError(f"checkpoint is at step {state['step']}, past --steps {self.cfg.steps}")
        try:
            self.model.load_state_dict(weights)
        except RuntimeError:
            raise IGPTError(f"checkpoint {ck} was made with a different model config") from None
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed"]


class Objective(torch.nn.Module):
    """``model.loss`` as a forward pass: what DDP synchronises and torch.compile compiles."""

    def __init__(self, model: IGPT):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.loss(x, mask)


class _Log:
    """``train_log.csv``, appended row by row; rows past a resumed step are dropped first."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = []
        if path.exists() and resume_step > 0:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        vals = [r["val_loss"] for r in rows if r.get("val_loss")]
        self.last_val_loss = float(vals[-1]) if vals else None
        with atomic_write(path, "w") as f:
            w = csv.DictWriter(f, LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, LOG_FIELDS).writerow(row)
