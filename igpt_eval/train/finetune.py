"""Classification fine-tuning (Chen et al. 2020, §2.3): the whole model plus a linear head.

The head is the paper's classifier (docs/design.md): ``wclf [classes, d]``, no bias,
zero-initialised, on the position-averaged final ``ln_f`` output, or (``layer=l``) on the
paper's probe feature of layer ``l`` (block l's ``ln_1`` output, averaged; see
:mod:`igpt_eval.model.sites`). The objective is ``L_gen + L_clf`` by default (the paper
found the joint loss better) or ``L_clf`` alone; ``L_gen`` is the model's own pretraining
loss (AR, or BERT on masked inputs; the classifier then sees the same masked input, as the
paper's BERT features do).

The recipe: Adam with the pretraining betas (0.9, 0.95), no weight decay, an optional linear
warm-up and then a *constant* learning rate (no cosine; the paper early-stops instead), early
stopping on validation accuracy with a patience counted in evaluations, and the best
checkpoint kept as the output folder's weights. The head trains on standardised features
(training statistics from ``scale_images`` images; :mod:`igpt_eval.model.head`), optionally
starting from the L2 logistic probe at a given C instead of zero; the saved checkpoint folds
the standardisation into ``wclf``'s weight and bias, so ``IGPT.classify`` on it needs nothing
else. ``finetune_runs.finetune_lr_sweep`` re-searches the rate, as the paper does. The
paper's augmentation (reflection-pad the image by 4 pixels, random crop back to size,
random horizontal flip) is an option; it works on images, so augmented batches are
palette-encoded on the fly, while unaugmented runs read the token cache.

Runs resume exactly, as pretraining does: batch ``s`` is a pure function of ``(seed, s)``
(:func:`igpt_eval.train.sampling.batch_rows`, the same BERT mask stream, augmentation drawn from a
generator seeded by ``(seed, s)``), and a checkpoint (``resume/step-N`` + ``LATEST``, see
:func:`igpt_eval.model.checkpoint.save_resume`) holds the weights, the optimizer, the step and the
early-stopping state. Files in ``out/``::

    model.safetensors, config.json, palette.npy   the best model so far (a checkpoint folder:
                                                  ``n_classes``, ``clf_layer``, ``clf_bias``
                                                  set, so IGPT.classify runs it)
    finetune.json                                 settings, data identity, head layer
    finetune_log.csv                              step, losses, validation accuracy
    results.parquet / results.csv                 tidy rows (probe="finetune"), at the end
                                                  (written by finetune_runs.run_finetune)
    resume/step-N/, resume/LATEST                 resumable state
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from igpt_eval.data.subsets import Labelled, augment_images
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.log import progress_bar
from igpt_eval.model.checkpoint import load_resume, save_model, save_resume
from igpt_eval.model.head import HeadInput, feature_scale, fold_standardisation, pooled_feature
from igpt_eval.model.igpt import IGPT
from igpt_eval.train.sampling import batch_rows, eval_mask_generator, generator, mask_generator
from igpt_eval.train.settings import FinetuneConfig

LOG_FIELDS = ["step", "train_loss", "gen_loss", "clf_loss", "val_acc", "val_loss", "seconds"]


# ------------------------------------------------------------------ model pieces
def with_classifier(
    model: IGPT, n_classes: int, layer: int | None = None, bias: bool = False
) -> IGPT:
    """A copy of ``model`` with a zero-initialised ``wclf [n_classes, d]`` head on layer
    ``layer``'s feature (``None``: the pooled ``ln_f``), with a bias when ``bias``. An
    existing head of the same shape is kept, so a fine-tuned checkpoint can be fine-tuned
    further."""
    clf_layer = -1 if layer is None or layer == model.config.n_layer else layer
    cfg = dataclasses.replace(model.config, n_classes=n_classes, clf_layer=clf_layer, clf_bias=bias)
    net = IGPT(cfg).to(model.device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("wclf.")}
    net.load_state_dict(state, strict=False)
    if model.wclf is not None and model.wclf.weight.shape == net.wclf.weight.shape:
        if (model.wclf.bias is None) == (net.wclf.bias is None):
            net.wclf.load_state_dict(model.wclf.state_dict())
    return net


def joint_losses(model: IGPT, tokens, layer: int, mask=None):
    """``(L_gen, pooled head input [B, d])`` from one forward pass: the model's own
    pretraining loss, with the head's feature read on the way (a site tap, which the CPU
    training path serves as the literal one does)."""
    keep = HeadInput(model, layer, stop=False)
    gen = model.loss(tokens, mask, tap=keep)
    return gen, keep.pooled()


#: ``fit_head(Z [n, d] standardised, labels [n], C, n_classes) -> (W [K, d], b [K])``: the L2
#: logistic probe fitted on the head's standardised input (``init_C``). The command line
#: passes :func:`igpt_eval.probes.logistic.probe_head`.
HeadFitter = Callable[[np.ndarray, np.ndarray, float, int], tuple[np.ndarray, np.ndarray]]


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
    """One fine-tuning run of ``model`` (with a ``wclf`` head) into the folder ``out``.

    A new run calls :meth:`prepare` (the head's standardisation, and its probe
    initialisation with ``fit_head`` when ``cfg.init_C`` is set) before :meth:`fit`; a
    resumed one calls :meth:`resume`, which restores them."""

    def __init__(
        self,
        model: IGPT,
        train: Labelled,
        val: Labelled,
        cfg: FinetuneConfig,
        out,
        palette=None,
        fit_head: HeadFitter | None = None,
    ):
        L = model.config.n_layer
        cfg.validate(L, len(train))
        if model.wclf is None:
            raise IGPTError("the model has no classifier head; build it with with_classifier")
        if cfg.augment and (train.images is None or palette is None):
            raise IGPTError("augmentation needs the training images and the palette")
        if cfg.init_C is not None and fit_head is None:
            raise IGPTError("a probe initialisation (init_C) needs a fit_head function")
        self.cfg, self.out, self.palette, self.fit_head = cfg, Path(out), palette, fit_head
        self.train, self.val = train, val
        self.layer = L if cfg.layer is None else cfg.layer
        # The saved config records where the head reads, so IGPT.classify reads there too.
        model.config = dataclasses.replace(
            model.config, clf_layer=-1 if self.layer == L else self.layer
        )
        self.batch = min(cfg.batch_size, len(train))
        self.model = model.to(cfg.device).train()
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=1e-8)
        self.step, self.elapsed, self.best = 0, 0.0, _Best()
        d = model.config.n_embd
        # The head's input standardisation (μ, σ) [d]: the identity until prepare() runs.
        self.scale = (torch.zeros(d), torch.ones(d))

    def _autocast(self):
        dev = torch.device(self.cfg.device).type
        return torch.autocast(dev, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def _head(self, x: torch.Tensor, model: IGPT | None = None, scale=None) -> torch.Tensor:
        """Class logits of pooled features ``x [B, d]``: ``wclf((x − μ)/σ)``."""
        mu, sd = self.scale if scale is None else scale
        return (model or self.model).wclf((x - mu.to(x.device)) / sd.to(x.device))

    @torch.no_grad()
    def prepare(self) -> None:
        """Standardisation statistics of the head's input from up to ``cfg.scale_images``
        training images (a seeded sample), and with ``cfg.init_C`` the head set to the L2
        logistic probe fitted on them (standardised; on at least ``cfg.init_n`` images, the
        sample the probe's C was chosen on). Call before the first step."""
        cfg = self.cfg
        n = cfg.scale_images
        if cfg.init_C is not None and cfg.init_n:
            # The probe's own sample size at least: on the shipped AR model's layer 7 the
            # probe fitted on 2,048 images scored 82.1-82.8% on validation, on 5,000 85.2%.
            n = max(n, cfg.init_n)
        n = min(n, len(self.train))
        rows = batch_rows(0, len(self.train), n, cfg.seed + 1)  # not the first batch's rows
        data = self.train.take(rows)
        X = self.features(data).astype(np.float64)  # (n, d)
        if cfg.standardize:
            mu, sd = (torch.from_numpy(a[0]).float() for a in feature_scale(X))
            self.scale = (mu, sd)
        if cfg.init_C is not None:
            mu, sd = (a.double().numpy() for a in self.scale)
            K = self.model.config.n_classes
            C = cfg.init_C * (cfg.init_n / n if cfg.init_n else 1.0)
            W, b = self.fit_head((X - mu) / sd, np.asarray(data.labels), C, K)
            wclf = self.model.wclf
            wclf.weight.copy_(torch.as_tensor(W, dtype=wclf.weight.dtype))
            if wclf.bias is None:
                raise IGPTError("a probe initialisation needs a head with a bias")
            wclf.bias.copy_(torch.as_tensor(b, dtype=wclf.bias.dtype))

    def _lr(self) -> float:
        """The rate of step ``self.step``: linear warm-up, then constant."""
        w = self.cfg.warmup_steps
        return self.cfg.lr * (min(1.0, (self.step + 1) / w) if w else 1.0)

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
                gen, feats = joint_losses(model, x, self.layer, mask)
            else:
                gen, feats = None, pooled_feature(model, x, self.layer, mask)
            clf = F.cross_entropy(self._head(feats).float(), y)
            loss = clf if gen is None else gen + clf
        loss.backward()
        for group in self.opt.param_groups:
            group["lr"] = self._lr()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return {
            "train_loss": loss.item(),
            "clf_loss": clf.item(),
            "gen_loss": "" if gen is None else gen.item(),
        }

    @torch.no_grad()
    def features(self, data: Labelled, batch_size: int = 256, model: IGPT | None = None):
        """The head's input ``[N, d]`` (float32 numpy) for ``data``, in evaluation mode (BERT
        models under the fixed evaluation masks)."""
        model = model or self.model
        was = model.training
        model.eval()
        g = eval_mask_generator()
        out = []
        for s in range(0, len(data), batch_size):
            x = torch.from_numpy(np.asarray(data.tokens[s : s + batch_size], dtype=np.int64))
            x = x.to(model.device)
            mask = model.sample_mask(*x.shape, generator=g) if model.sos is None else None
            with self._autocast():
                out.append(pooled_feature(model, x, self.layer, mask).float().cpu())
        model.train(was)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def predict(self, data: Labelled, model: IGPT | None = None, scale=None):
        """``(predicted classes [N], per-example cross-entropy [N])`` of the head on ``data``
        (``model``/``scale``: another model and input scaling than the run's, e.g. the
        saved checkpoint, whose head has the scaling folded in)."""
        X = torch.from_numpy(self.features(data, model=model))
        logits = self._head(X.to((model or self.model).device), model, scale).float().cpu()
        y = torch.from_numpy(np.asarray(data.labels))
        return logits.argmax(1).numpy(), F.cross_entropy(logits, y, reduction="none").numpy()

    def evaluate(self, data: Labelled, model: IGPT | None = None, scale=None):
        """``(accuracy, mean cross-entropy, per-example correctness)`` of the head on
        ``data`` (arguments as :meth:`predict`)."""
        pred, losses = self.predict(data, model, scale)
        correct = pred == np.asarray(data.labels)
        return float(correct.mean()), float(losses.mean()), correct

    def saved_model(self) -> IGPT:
        """The model as it is saved: a copy with the head's standardisation folded into
        ``wclf`` (whose bias then holds the centring)."""
        net = copy.deepcopy(self.model)
        w, b = fold_standardisation(net.wclf.weight.detach().cpu(), _bias(net), *self.scale)
        with torch.no_grad():
            net.wclf.weight.copy_(w)
            if net.wclf.bias is not None:
                net.wclf.bias.copy_(b)
            elif b.any():
                raise IGPTError("folding the head's centring in needs a head with a bias")
        return net

    def early_stopping_set(self) -> Labelled:
        """The validation images each evaluation scores: the first ``cfg.eval_images``
        (all of them when None)."""
        n = self.cfg.eval_images
        return self.val if n is None else self.val.take(np.arange(min(n, len(self.val))))

    def fit(self) -> _Best:
        """Train until ``cfg.steps`` or early stopping; the best model is in ``out``."""
        cfg, best = self.cfg, self.best
        val = self.early_stopping_set()
        bar = progress_bar(total=cfg.steps, initial=self.step, desc="finetune")
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
                save_model(self.saved_model(), self.out)  # the best model: the folder's weights
            else:
                best.bad += 1
                best.stopped = best.bad >= cfg.patience
            self.elapsed += time.perf_counter() - t0
            t0 = time.perf_counter()
            if cfg.max_seconds is not None and self.elapsed >= cfg.max_seconds:
                best.stopped = True
            row = dict(step=self.step, val_acc=acc, val_loss=loss, seconds=round(self.elapsed, 2))
            best.history.append({**losses, **row})
            self.checkpoint()
        bar.close()
        return best

    def checkpoint(self) -> None:
        """Resumable state (weights, optimizer, step, early stopping, the head's scaling)
        and the log."""
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "optimizer": self.opt.state_dict(),
            "best": dataclasses.asdict(self.best),
            "scale": list(self.scale),
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
        self.scale = tuple(state["scale"])


def _bias(net: IGPT) -> torch.Tensor | None:
    b = net.wclf.bias
    return None if b is None else b.detach().cpu()
