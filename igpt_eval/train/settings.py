"""The fine-tuning recipe: :class:`FinetuneConfig`, what
:class:`~igpt_eval.train.finetune.FineTuner` trains with and ``finetune.json`` records.

A light module (no torch), so the command line can build it and show its defaults without
importing the trainer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from igpt_eval.errors import IGPTError

OBJECTIVES = ("joint", "clf")


@dataclass
class FinetuneConfig:
    """How to fine-tune. Defaults suit the shipped CPU models; the paper's where it says."""

    steps: int = 500  # optimizer steps (an upper bound: early stopping may end sooner)
    epochs: float | None = None  # passes over the training set instead of steps (None: steps)
    batch_size: int = 32  # images per step; low-data subsets can be as small as 30 images
    lr: float = 1e-3  # peak rate, constant after warm-up (re-search it: finetune_lr_sweep)
    warmup_steps: int = 0  # linear warm-up from 0 to lr (0: none, the earlier recipe)
    betas: tuple[float, float] = (0.9, 0.95)  # the pretraining betas (the paper)
    objective: str = "joint"  # "joint" = L_gen + L_clf (the paper's better one), or "clf"
    layer: int | None = None  # head on layer l's probe feature; None = ln_f (docs/design.md)
    augment: bool = False  # reflection pad 4, random crop, horizontal flip (the paper's CIFAR)
    eval_every: int = 50  # steps between validation accuracies (and checkpoints)
    patience: int = 5  # evaluations without improvement before stopping
    eval_images: int | None = None  # validation images scored (None: all of them)
    bf16: bool = False  # bf16 autocast (pays with bf16 units or a GPU); weights stay float32
    seed: int = 0  # data order, augmentation, BERT masks
    standardize: bool = True  # head on (x − μ)/σ, folded into wclf's weight and bias on save
    scale_images: int = 2048  # training images for μ, σ and the probe init (~40 s for mini)
    # (with init_C, at least init_n of them)
    init_C: float | None = None  # start the head at the L2 logistic probe with this C, ...
    # ... which was chosen on init_n training images: scikit-learn's C multiplies a sum over
    # examples, so the same per-example penalty on n images is C·init_n/n (None: C as is).
    init_n: int | None = None
    # Stop at the first evaluation past this many seconds of training (the best model kept).
    max_seconds: float | None = None
    device: str = "cpu"
    # --- what is fine-tuned, read where the checkpoint and the dataset are opened
    # (finetune_runs.finetune_model); a run given arrays and a model ignores them
    labels_per_class: int | None = None  # K labelled images per class of train (None: all)
    random_init: bool = False  # from-scratch control: the pretraining run's initialisation

    def for_train(self, n_train: int) -> FinetuneConfig:
        """These settings for a training set of ``n_train`` images: ``epochs``, when given,
        turned into the steps it takes (at least one), so that what is recorded and resumed
        is the step budget that ran."""
        if self.epochs is None:
            return self
        per_epoch = n_train / max(1, min(self.batch_size, n_train))
        return dataclasses.replace(self, steps=max(1, round(self.epochs * per_epoch)), epochs=None)

    def validate(self, n_layer: int, n_train: int) -> None:
        """One clear error for settings that cannot train."""
        if self.objective not in OBJECTIVES:
            raise IGPTError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.layer is not None and not 0 <= self.layer <= n_layer:
            raise IGPTError(
                f"layer {self.layer} is out of range: this model has layers 0..{n_layer} "
                f"(0 = embeddings, {n_layer} = final ln_f)"
            )
        if self.steps < 1 or self.batch_size < 1:
            raise IGPTError("steps and batch size must be >= 1")
        if self.epochs is not None and not self.epochs > 0:
            raise IGPTError(f"epochs must be positive, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise IGPTError(f"learning rate must be a positive number, got {self.lr}")
        if self.eval_every < 1 or self.patience < 1:
            raise IGPTError("eval_every and patience must be >= 1")
        if self.warmup_steps < 0 or self.scale_images < 2:
            raise IGPTError("warm-up steps must be >= 0 and scale images >= 2")
        if self.init_C is not None and not (self.init_C > 0 and math.isfinite(self.init_C)):
            raise IGPTError(f"the probe's C must be a positive number, got {self.init_C}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise IGPTError(f"the wall-clock cap must be positive, got {self.max_seconds}")
        if n_train < 1:
            raise IGPTError("the training set is empty")
