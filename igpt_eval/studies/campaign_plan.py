"""The plan of a pretraining campaign (:mod:`igpt_eval.studies.campaign`): the model its
settings describe, the file its weights ship in, and the step count that fits the wall-clock
budget given a step time, measured by the campaign's pilot or, for a dry run, assumed.

Pure arithmetic on the settings and the dataset's split sizes: nothing is trained or read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from igpt_eval.errors import IGPTError
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.igpt import IGPT
from igpt_eval.studies.settings import CampaignSettings
from igpt_eval.train.pretrain import TrainConfig, log_spaced_steps

#: The largest file a GPU call brings back (the device tool's limit).
MAX_FILE_BYTES = 16 * 2**20
#: Share of the budget kept back for what the pilot cannot time: checkpoints, the last save.
RESERVE = 0.04
#: Achieved training rates a dry run assumes (FLOP/s), where nothing has been measured yet:
#: on an H200 a ~10% share of its ~790 TFLOP/s bf16 peak, for a model this narrow (d = 192)
#: run eagerly; on a CPU about what this project's 2-core machines train at in float32.
ASSUMED_RATE = {"cuda": 100e12, "cpu": 100e9}
#: A dry run's allowance for the probe fits (L-BFGS on every layer, controls, twin, snapshots).
PROBE_ALLOWANCE_S = {"cuda": 60.0, "cpu": 600.0}


@dataclass
class Plan:
    """What a campaign will do, from its settings and a step time (measured or assumed)."""

    model: IGPTConfig
    n_params: int
    n_train: int
    batch_size: int
    weight_dtype: str  # how the shipped weights are stored
    weight_bytes: int
    step_seconds: float
    measured: bool  # step_seconds from the pilot (True) or from ASSUMED_RATE (False)
    steps: int
    warmup: int
    eval_every: int
    snapshot_steps: tuple[int, ...]
    tokens: int  # seen in training
    train_flops: float  # matmul FLOPs of training (IGPTConfig.flops_per_token)
    extract_images: int  # forward passes of the probes: final, twin, snapshots
    minutes: dict[str, float]  # expected wall clock per stage

    def lines(self) -> list[str]:
        """The plan in words, as a dry run prints it."""
        m, how = self.model, "measured" if self.measured else "assumed"
        return [
            f"model: {m.n_layer} layers x d {m.n_embd} ({m.n_head} heads), {m.n_px}x{m.n_px} "
            f"px (T = {m.n_positions}), {m.vocab_size} colours, {self.n_params / 1e6:.2f}M "
            f"parameters; weights {self.weight_dtype}, {self.weight_bytes / 2**20:.1f} MiB",
            f"steps: {self.steps:,} x batch {self.batch_size} ({how} {self.step_seconds * 1e3:.1f} "
            f"ms/step), warm-up {self.warmup:,}, cosine to the last step; "
            f"{self.tokens / 1e6:,.0f}M tokens = {self.steps * self.batch_size / self.n_train:.1f} "
            f"epochs of {self.n_train:,} images; {self.train_flops:.2e} training FLOPs",
            f"snapshots at steps {', '.join(map(str, self.snapshot_steps))}; validation "
            f"every {self.eval_every:,} steps",
            f"probes: {self.extract_images:,} images through the model (final, twin, snapshots)",
            "expected minutes: "
            + ", ".join(f"{k} {v:.1f}" for k, v in self.minutes.items())
            + f"; total {sum(self.minutes.values()):.1f}",
        ]


def model_config(s: CampaignSettings) -> IGPTConfig:
    """The campaign's model: an AR iGPT of the settings' shape."""
    return IGPTConfig(
        vocab_size=s.vocab_size, n_px=s.n_px, n_embd=s.n_embd, n_head=s.n_head,
        n_layer=s.n_layer, objective="ar",
    )  # fmt: skip


def weight_dtype(n_params: int) -> torch.dtype:
    """float32 when the weights fit one returnable file, else bfloat16 (half the bytes; the
    loader widens them back to float32 exactly)."""
    return torch.float32 if 4 * n_params <= MAX_FILE_BYTES else torch.bfloat16


def make_plan(
    s: CampaignSettings,
    split_sizes: tuple[int, int, int],
    device: str,
    step_seconds: float | None = None,
    val_seconds: float = 0.0,
    spent_seconds: float = 0.0,
) -> Plan:
    """The step count that fits the budget: ``budget − spent − reserve − validations``
    divided by the step time (``None``: assumed from :data:`ASSUMED_RATE`).
    ``split_sizes`` are the dataset's train, val and test sizes."""
    cfg = model_config(s)
    with torch.device("meta"):  # counted, not initialised
        n_params = IGPT(cfg).n_params()
    n_train = split_sizes[0]
    kind = torch.device(device).type
    tok_step = s.batch_size * cfg.n_positions
    measured = step_seconds is not None
    if step_seconds is None:
        step_seconds = cfg.flops_per_token(head=True, training=True) * tok_step / ASSUMED_RATE[kind]
        val_seconds = step_seconds / 3 * s.eval_images / s.batch_size
    usable = s.budget_min * 60 * (1 - RESERVE) - spent_seconds
    n_vals = s.evals + s.snapshots + 2  # the regular ones, each snapshot's, step 0, the last
    steps = int((usable - n_vals * val_seconds) // step_seconds)
    if steps < 2 * (s.snapshots + 1):
        raise IGPTError(
            f"a budget of {s.budget_min:g} min leaves {max(steps, 0)} steps at "
            f"{step_seconds * 1e3:.0f} ms a step: too few for {s.snapshots} snapshots; "
            "give a larger --budget-min"
        )
    tc = TrainConfig(steps=steps, batch_size=s.batch_size)
    snaps = (0, *log_spaced_steps(s.snapshots, steps))
    images = 2 * _images(s.final_sizes, split_sizes) + len(snaps) * _images(
        s.track_sizes, split_sizes
    )
    fwd = cfg.flops_per_token(head=False) * cfg.n_positions
    rate = cfg.flops_per_token(training=True) * tok_step / step_seconds  # achieved, training
    extract_min = images * fwd / rate / 60
    dtype = weight_dtype(n_params)
    return Plan(
        model=cfg,
        n_params=n_params,
        n_train=n_train,
        batch_size=s.batch_size,
        weight_dtype=str(dtype).removeprefix("torch."),
        weight_bytes=n_params * dtype.itemsize,
        step_seconds=step_seconds,
        measured=measured,
        steps=steps,
        warmup=tc.warmup(n_train),
        eval_every=max(1, steps // s.evals),
        snapshot_steps=snaps,
        tokens=steps * tok_step,
        train_flops=cfg.flops_per_token(training=True) * steps * tok_step,
        extract_images=images,
        minutes={
            "pretraining": s.budget_min,
            "extraction": extract_min,
            "probe fits (allowance)": PROBE_ALLOWANCE_S[kind] / 60,
            "fine-tuning": s.finetune_min,
        },
    )


def _images(sizes, split_sizes) -> int:
    """Images in the samples of the three splits (``None``: the whole split)."""
    return sum(n if x is None else min(x, n) for x, n in zip(sizes, split_sizes, strict=True))
