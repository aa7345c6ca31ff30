"""Classification fine-tuning (Chen et al. 2020, §2.3): the whole model plus a linear head.

The head is DESIGN §3's classifier: ``wclf [classes, d]``, no bias, zero-initialised, on the
position-averaged final ``ln_f`` output, or (``layer=l``) on the paper's probe feature of
layer ``l`` (block l's ``ln_1`` output, averaged; see :mod:`igpt_eval.model.sites`). The objective
is ``L_gen + L_clf`` by default (the paper found the joint loss better) or ``L_clf`` alone;
``L_gen`` is the model's own pretraining loss (AR, or BERT on masked inputs; the classifier
then sees the same masked input, as the paper's BERT features do).

The recipe: Adam with the pretraining betas (0.9, 0.95), no weight decay, a *constant*
learning rate (no warm-up, no cosine), early stopping on validation accuracy with a patience
counted in evaluations, and the best checkpoint kept as the output folder's weights. The
paper's augmentation (reflection-pad the image by 4 pixels, random crop back to size,
random horizontal flip) is an option; it works on images, so augmented batches are
palette-encoded on the fly, while unaugmented runs read the token cache.

Runs resume exactly, as pretraining does: batch ``s`` is a pure function of ``(seed, s)``
(:func:`igpt_eval.train.sampling.batch_rows`, the same BERT mask stream, augmentation drawn from a
generator seeded by ``(seed, s)``), and a checkpoint (``resume/step-N`` + ``LATEST``, see
:func:`igpt_eval.model.checkpoint.save_resume`) holds the weights, the optimizer, the step and the
early-stopping state. Files in ``out/``::

    model.safetensors, config.json, palette.npy   the best model so far (a checkpoint folder;
                                                  ``n_classes`` set, so IGPT.classify works
                                                  when the head is on ln_f)
    finetune.json                                 settings, data identity, head layer
    finetune_log.csv                              step, losses, validation accuracy
    results.parquet / results.csv                 tidy rows (probe="finetune"), at the end
                                                  (written by finetune_runs.run_finetune)
    resume/step-N/, resume/LATEST                 resumable state
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from igpt_eval.analysis.stats import bootstrap_accuracy_ci
from igpt_eval.data.subsets import Labelled, augment_images
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.model.blocks import StopForward
from igpt_eval.model.checkpoint import WEIGHTS, load_resume, save_model, save_resume
from igpt_eval.model.igpt import IGPT
from igpt_eval.model.sites import site_name
from igpt_eval.train.sampling import batch_rows, eval_mask_generator, generator, mask_generator

OBJECTIVES = ("joint", "clf")
LOG_FIELDS = ["step", "train_loss", "gen_loss", "clf_loss", "val_acc", "val_loss", "seconds"]


@dataclass
class FinetuneConfig:
    """How to fine-tune. Defaults suit the shipped CPU models; the paper's where it says."""

    steps: int = 500  # optimizer steps (an upper bound: early stopping may end sooner)
    batch_size: int = 32  # images per step; low-data subsets can be as small as 30 images
    lr: float = 1e-3  # constant; a zero head needs a rate that moves it in few steps
    betas: tuple[float, float] = (0.9, 0.95)  # the pretraining betas (the paper)
    objective: str = "joint"  # "joint" = L_gen + L_clf (the paper's better one), or "clf"
    layer: int | None = None  # head on layer l's probe feature; None = ln_f (DESIGN §3)
    augment: bool = False  # reflection pad 4, random crop, horizontal flip (the paper's CIFAR)
    eval_every: int = 50  # steps between validation accuracies (and checkpoints)
    patience: int = 5  # evaluations without improvement before stopping
    eval_images: int | None = None  # validation images scored (None: all of them)
    bf16: bool = False  # bf16 autocast (about 2x faster on CPU); weights stay float32
    seed: int = 0  # data order, augmentation, BERT masks
    device: str = "cpu"

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
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise IGPTError(f"learning rate must be a positive number, got {self.lr}")
        if self.eval_every < 1 or self.patience < 1:
            raise IGPTError("eval_every and patience must be >= 1")
        if n_train < 1:
            raise IGPTError("the training set is empty")


# ------------------------------------------------------------------ model pieces
def with_classifier(model: IGPT, n_classes: int) -> IGPT:
    """A copy of ``model`` with a zero-initialised ``wclf [n_classes, d]`` head (an existing
    head of the same size is kept, so a fine-tuned checkpoint can be fine-tuned further)."""
    cfg = dataclasses.replace(model.config, n_classes=n_classes)
    net = IGPT(cfg).to(model.device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("wclf.")}
    net.load_state_dict(state, strict=False)
    if model.wclf is not None and model.wclf.weight.shape == net.wclf.weight.shape:
        net.wclf.load_state_dict(model.wclf.state_dict())
    return net


class _HeadInput:
    """A site tap that keeps layer ``layer``'s probe feature: block ``layer``'s ``ln_1``
    output, or for the last layer the final residual stream, which ``pooled`` puts through
    ``ln_f`` (BERT's loss applies ``ln_f`` to the masked positions only)."""

    def __init__(self, model: IGPT, layer: int, stop: bool):
        self.model, self.layer, self.stop = model, layer, stop
        self.kind = "ln_1" if layer < model.config.n_layer else "resid_pre"
        self.x: torch.Tensor | None = None

    def __call__(self, layer: int, kind: str, x: torch.Tensor) -> None:
        if layer == self.layer and kind == self.kind:
            self.x = x
            if self.stop:
                raise StopForward

    def pooled(self) -> torch.Tensor:
        x = self.x if self.kind == "ln_1" else self.model.ln_f(self.x)  # (B, T, d)
        return x.mean(1)  # (B, d)


def head_features(model: IGPT, tokens, layer: int, mask=None) -> torch.Tensor:
    """The head's input ``[B, d]``: layer ``layer``'s probe feature (block ``layer``'s
    ``ln_1`` output, or ``ln_f`` for the last layer) averaged over positions, on the training
    path as on the literal one. Nothing past that layer is computed."""
    keep = _HeadInput(model, layer, stop=True)
    try:
        model.residual(tokens, mask, tap=keep)
    except StopForward:
        pass
    return keep.pooled()


def joint_losses(model: IGPT, tokens, layer: int, mask=None):
    """``(L_gen, class logits [B, classes])`` from one forward pass: the model's own
    pretraining loss, with the head's feature read on the way (a site tap, which the CPU
    training path serves as the literal one does)."""
    keep = _HeadInput(model, layer, stop=False)
    gen = model.loss(tokens, mask, tap=keep)
    return gen, model.wclf(keep.pooled())


# ------------------------------------------------------------------ the trainer
@dataclass
class _Best:
    acc: float = -1.0
    loss: float = math.inf
    step: int = 0
    bad: int = 0  # evaluations since the last improvement
    stopped: bool = False
    history: list = field(default_factory=list)  # log rows, kept for exact resumption


class FineTuner:
    """One fine-tuning run of ``model`` (with a ``wclf`` head) into the folder ``out``."""

    def __init__(
        self, model: IGPT, train: Labelled, val: Labelled, cfg: FinetuneConfig, out, palette=None
    ):
        L = model.config.n_layer
        cfg.validate(L, len(train))
        if model.wclf is None:
            raise IGPTError("the model has no classifier head; build it with with_classifier")
        if cfg.augment and (train.images is None or palette is None):
            raise IGPTError("augmentation needs the training images and the palette")
        self.cfg, self.out, self.palette = cfg, Path(out), palette
        self.train, self.val = train, val
        self.layer = L if cfg.layer is None else cfg.layer
        self.batch = min(cfg.batch_size, len(train))
        self.model = model.to(cfg.device).train()
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-8)
        self.step, self.elapsed, self.best = 0, 0.0, _Best()

    def _autocast(self):
        dev = torch.device(self.cfg.device).type
        return torch.autocast(dev, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def train_step(self) -> dict:
        """One optimizer step on batch ``self.step``; returns its losses."""
        cfg, model = self.cfg, self.model
        rows = batch_rows(self.step, len(self.train), self.batch, cfg.seed)
        if cfg.augment:
            g = generator("augment", cfg.seed, self.step)
            x = self.palette.encode(augment_images(self.train.images[rows], g))
        else:
            x = self.train.tokens[rows]
        x = torch.from_numpy(np.asarray(x, dtype=np.int64)).to(cfg.device)  # (B, T)
        y = torch.from_numpy(np.asarray(self.train.labels[rows])).to(cfg.device)  # (B,)
        mask = None
        if model.config.objective == "bert":
            mask = model.sample_mask(*x.shape, generator=mask_generator(cfg.seed, self.step))
        with self._autocast():
            if cfg.objective == "joint":
                gen, logits = joint_losses(model, x, self.layer, mask)
            else:
                gen, logits = None, model.wclf(head_features(model, x, self.layer, mask))
            clf = F.cross_entropy(logits.float(), y)
            loss = clf if gen is None else gen + clf
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return {
            "train_loss": loss.item(),
            "clf_loss": clf.item(),
            "gen_loss": "" if gen is None else gen.item(),
        }

    @torch.no_grad()
    def evaluate(self, data: Labelled, batch_size: int = 256):
        """``(accuracy, mean cross-entropy, per-example correctness)`` of the head on ``data``."""
        model = self.model
        was = model.training
        model.eval()
        g = eval_mask_generator()
        correct, losses = [], []
        for s in range(0, len(data), batch_size):
            x = torch.from_numpy(np.asarray(data.tokens[s : s + batch_size], dtype=np.int64))
            y = torch.from_numpy(np.asarray(data.labels[s : s + batch_size]))
            mask = model.sample_mask(*x.shape, generator=g) if model.sos is None else None
            with self._autocast():
                logits = model.wclf(head_features(model, x, self.layer, mask)).float().cpu()
            correct.append((logits.argmax(1) == y).numpy())
            losses.append(F.cross_entropy(logits, y, reduction="none").numpy())
        model.train(was)
        correct, losses = np.concatenate(correct), np.concatenate(losses)
        return float(correct.mean()), float(losses.mean()), correct

    def fit(self, progress: bool = True) -> _Best:
        """Train until ``cfg.steps`` or early stopping; the best model is in ``out``."""
        cfg, best = self.cfg, self.best
        val = (
            self.val
            if cfg.eval_images is None
            else self.val.take(np.arange(min(cfg.eval_images, len(self.val))))
        )
        bar = tqdm(total=cfg.steps, initial=self.step, desc="finetune", disable=not progress)
        t0 = time.perf_counter()
        while self.step < cfg.steps and not best.stopped:
            losses = self.train_step()
            if not math.isfinite(losses["train_loss"]):
                raise IGPTError(
                    f"fine-tuning diverged at step {self.step}; lower the learning rate"
                )
            bar.update(1)
            bar.set_postfix(loss=f"{losses['train_loss']:.3f}")
            if self.step % cfg.eval_every and self.step != cfg.steps:
                continue
            acc, loss, _ = self.evaluate(val)
            if (acc, -loss) > (best.acc, -best.loss):
                best.acc, best.loss, best.step, best.bad = acc, loss, self.step, 0
                save_model(self.model, self.out)  # the best model is the folder's weights
            else:
                best.bad += 1
                best.stopped = best.bad >= cfg.patience
            self.elapsed += time.perf_counter() - t0
            t0 = time.perf_counter()
            row = dict(step=self.step, val_acc=acc, val_loss=loss, seconds=round(self.elapsed, 2))
            best.history.append({**losses, **row})
            self.checkpoint()
        bar.close()
        return best

    def checkpoint(self) -> None:
        """Resumable state (weights, optimizer, step, early stopping) and the log."""
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "optimizer": self.opt.state_dict(),
            "best": dataclasses.asdict(self.best),
        }
        save_resume(self.out, self.step, self.model, state)
        with atomic_write(self.out / "finetune_log.csv", "w") as f:
            w = csv.DictWriter(f, LOG_FIELDS)
            w.writeheader()
            w.writerows(self.best.history)

    def resume(self) -> None:
        """Continue from ``out/resume/LATEST``."""
        weights, state, ck = load_resume(self.out)
        try:
            self.model.load_state_dict(weights)
        except RuntimeError:
            raise IGPTError(f"checkpoint {ck} was made with a different model") from None
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.best = _Best(**state["best"])

    def test_rows(self, test: Labelled, meta: dict, n_boot: int = 10_000) -> list[dict]:
        """Tidy result rows: the best validation score and the test score of the best model
        (loaded from ``out``), with a bootstrap 95% interval for the test accuracy."""
        self.model.load_state_dict(load_file(self.out / WEIGHTS))
        acc, loss, correct = self.evaluate(test)
        lo, hi = bootstrap_accuracy_ci(correct, n_boot=n_boot, seed=self.cfg.seed)
        L, b = self.model.config.n_layer, self.best
        common = dict(
            meta,
            layer=self.layer,
            site=site_name(self.layer, "ln_1", L),
            site_kind="ln_1",
            probe="finetune",
            backend="torch",
            C=np.nan,
            lr=self.cfg.lr,
            n_iter=b.step,
            converged=b.stopped,
            seconds=self.elapsed,
            seed=self.cfg.seed,
            selected=True,
            n_train=len(self.train),
            finetune_objective=self.cfg.objective,
            augment=self.cfg.augment,
            steps=self.step,
        )
        return [
            dict(common, split="val", metric="accuracy", value=b.acc, n_eval=len(self.val)),
            dict(common, split="val", metric="loss", value=b.loss, n_eval=len(self.val)),
            dict(
                common,
                split="test",
                metric="accuracy",
                value=acc,
                ci_low=lo,
                ci_high=hi,
                n_eval=len(test),
            ),
            dict(common, split="test", metric="loss", value=loss, n_eval=len(test)),
        ]
