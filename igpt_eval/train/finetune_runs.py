"""Fine-tuning runs: a folder guarded and recorded, data loaded, results written.

:func:`run_finetune` fine-tunes an in-memory model on :class:`~igpt_eval.data.subsets.Labelled`
arrays (what :mod:`igpt_eval.studies.lowdata` calls once per draw); :func:`finetune_model` loads a
checkpoint folder and a registered dataset first (what ``igpt-eval finetune`` runs). The
training itself is :class:`igpt_eval.train.finetune.FineTuner`.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import torch

from igpt_eval.data import load_dataset, load_tokens
from igpt_eval.data.source import DataSource
from igpt_eval.data.subsets import Labelled, lowdata_split
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write, read_json, write_json
from igpt_eval.model.checkpoint import has_resume, load_model
from igpt_eval.model.igpt import IGPT
from igpt_eval.model.loading import open_model, run_defaults
from igpt_eval.model.sites import site_name
from igpt_eval.names import ModelKind, random_twin
from igpt_eval.predictions import Predictions, prediction_key
from igpt_eval.results import load_results, save_results, to_frame
from igpt_eval.stats import bootstrap_accuracy_ci
from igpt_eval.train.finetune import FinetuneConfig, FineTuner, HeadFitter, with_classifier
from igpt_eval.train.runs import sweep_lrs, walk_rates

log = logging.getLogger(__name__)

# Settings a resumed run must share with the run it continues (the step budget may grow).
_RESUMABLE = (
    "batch_size",
    "lr",
    "warmup_steps",
    "betas",
    "objective",
    "layer",
    "augment",
    "eval_every",
    "patience",
    "eval_images",
    "bf16",
    "seed",
    "standardize",
    "scale_images",
    "init_C",
    "init_n",
)
#: What a learning-rate sweep leaves in the folder the full run then uses.
SWEEP_DIR, SWEEP_CSV = "sweep", "lr_sweep.csv"


def run_finetune(
    model: IGPT,
    palette,
    train: Labelled,
    val: Labelled,
    test: Labelled | None,
    cfg: FinetuneConfig,
    out,
    *,
    n_classes: int | None = None,
    meta: dict | None = None,
    identity: dict | None = None,
    resume: bool = False,
    fit_head: HeadFitter | None = None,
    command: str | None = None,
):
    """Fine-tune ``model`` (a pretrained IGPT, palette ids from ``palette``) on ``train``,
    early-stopping on ``val``, into the folder ``out``; score the best model on ``test``
    (``None``: no test rows; a learning-rate sweep's runs are scored on validation only).

    Returns the tidy results (also saved as ``out/results.parquet``/``.csv``). ``meta`` fills
    the model/objective/dataset columns, ``identity`` (data fingerprints) goes into
    ``finetune.json`` and must match when ``resume`` continues the run in ``out``. A new run
    refuses a folder that already holds files (a finished learning-rate sweep aside). A
    finished run in ``out`` is read back when ``resume`` is set. ``fit_head`` fits the
    probe that initialises the head when ``cfg.init_C`` is set
    (:data:`~igpt_eval.train.finetune.HeadFitter`).
    """

    out = Path(out)
    if len(np.unique(train.labels)) < 2:
        raise IGPTError("the training labels hold fewer than two classes: nothing to classify")
    splits = (train, val) if test is None else (train, val, test)
    n_classes = n_classes or int(max(s.labels.max() for s in splits) + 1)
    info = {
        "finetune_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()
        },
        "identity": identity or {},
        "n_classes": n_classes,
        "head_layer": model.config.n_layer if cfg.layer is None else cfg.layer,
        "command": command,  # recorded for the model card; not part of the run's identity
    }
    _check_out(out, info, resume)
    if resume and _finished(out, cfg.steps):
        log.info("the fine-tuning run in %s already finished: its results", out)
        return load_results(out / "results.parquet")  # read back, not repeated
    bias = cfg.standardize or cfg.init_C is not None  # folding the centring needs a bias
    net = with_classifier(model, n_classes, cfg.layer, bias=bias)
    tuner = FineTuner(net, train, val, cfg, out, palette=palette, fit_head=fit_head)
    write_json(out / "finetune.json", info)
    if resume and has_resume(out):
        tuner.resume()
    else:
        tuner.prepare()
        if palette is not None:
            palette.save(out / "palette.npy")
        net.config.save(out / "config.json")
    tuner.fit()
    rows, predictions = test_rows(tuner, test, dict(meta or {}))
    df = to_frame(rows)
    save_results(df, out, predictions=predictions if predictions.pred else None)
    return df


def test_rows(
    tuner: FineTuner, test: Labelled | None, meta: dict, n_boot: int = 10_000
) -> tuple[list[dict], Predictions]:
    """Tidy result rows of a finished run: its best validation score, and (unless ``test``
    is None) the test score of
    the saved best model (read back from the folder as a user would load it, the head's
    standardisation folded in) with a bootstrap 95% interval for the test accuracy; and
    its per-example test predictions (``{model}/finetune/{site}``), for paired statistics
    against probes scored on the same test images."""
    cfg, b = tuner.cfg, tuner.best
    L = tuner.model.config.n_layer
    common = dict(
        meta,
        layer=tuner.layer,
        site=site_name(tuner.layer, "ln_1", L),
        site_kind="ln_1",
        probe="finetune",
        backend="torch",
        C=np.nan if cfg.init_C is None else cfg.init_C,
        lr=cfg.lr,
        n_iter=b.step,
        converged=b.stopped,
        seconds=tuner.elapsed,
        seed=cfg.seed,
        selected=True,
        n_train=len(tuner.train),
        finetune_objective=cfg.objective,
        augment=cfg.augment,
        steps=tuner.step,
    )
    val = dict(common, split="val", n_eval=len(tuner.early_stopping_set()))
    rows = [dict(val, metric="accuracy", value=b.acc), dict(val, metric="loss", value=b.loss)]
    predictions = Predictions()
    if test is None:
        return rows, predictions
    saved = load_model(tuner.out, device=cfg.device)
    d = saved.config.n_embd
    pred, losses = tuner.predict(test, saved, (torch.zeros(d), torch.ones(d)))
    correct = pred == np.asarray(test.labels)
    lo, hi = bootstrap_accuracy_ci(correct, n_boot=n_boot, seed=cfg.seed)
    tst = dict(common, split="test", n_eval=len(test))
    predictions.add(prediction_key(meta.get("model", "model"), "finetune", common["site"]),
                    pred, np.asarray(test.labels))  # fmt: skip
    rows += [
        dict(tst, metric="accuracy", value=float(correct.mean()), ci_low=lo, ci_high=hi),
        dict(tst, metric="loss", value=float(losses.mean())),
    ]
    return rows, predictions


def finetune_lr_sweep(
    model: IGPT,
    palette,
    train: Labelled,
    val: Labelled,
    test: Labelled,
    cfg: FinetuneConfig,
    out,
    *,
    max_runs: int = 4,
    start: float = 1e-3,
    sweep_steps: int,
    **kwargs,
):
    """The paper re-searches the fine-tuning rate: runs of ``sweep_steps`` steps at
    ``start``, ``start``·0.3, ``start``·0.1, … (at most ``max_runs``, each in
    ``out/sweep/lr-X``, walked as pretraining's sweep is: :func:`~igpt_eval.train.runs.
    walk_rates`) scored by their best validation accuracy; then the full run at the best
    rate in ``out``. Writes ``out/lr_sweep.csv``; returns the full run's results. Keyword
    arguments go to :func:`run_finetune` (``resume`` continues an interrupted sweep)."""
    out = Path(out)
    if not kwargs.get("resume") and out.exists() and any(out.iterdir()):
        raise IGPTError(f"{out} already holds files; choose a new --out for the sweep")
    kwargs["resume"] = True  # each run: read back when finished, resumed, or started

    def score(lr: float) -> float:
        short = dataclasses.replace(cfg, lr=lr, steps=min(sweep_steps, cfg.steps))
        try:
            df = run_finetune(model, palette, train, val, None, short,  # val decides
                              out / SWEEP_DIR / f"lr-{lr:g}", **kwargs)  # fmt: skip
        except IGPTError as e:
            if "diverged" not in str(e):
                raise
            return math.inf
        return -float(df[(df.split == "val") & (df.metric == "accuracy")].value.iloc[0])

    tried, best = walk_rates(sweep_lrs(max_runs, start), score)
    with atomic_write(out / SWEEP_CSV, "w") as f:
        w = csv.writer(f)
        w.writerow(["lr", "val_acc", "steps", "best"])
        steps = min(sweep_steps, cfg.steps)
        for lr, v in tried:
            w.writerow([lr, -v if math.isfinite(v) else "", steps, lr == best])
    return run_finetune(model, palette, train, val, test, dataclasses.replace(cfg, lr=best),
                        out, **kwargs)  # fmt: skip


def _check_out(out: Path, info: dict, resume: bool) -> None:
    """A new run needs an empty folder (a finished sweep aside); a resumed one the same
    model, data and settings as the run it continues."""
    if resume and not (out / "finetune.json").is_file() and not _holds_run(out):
        # The same command serves the first start and every restart of a requeued job.
        log.info("no fine-tuning run in %s yet: starting it", out)
        return
    if not resume:
        if _holds_run(out):
            raise IGPTError(
                f"{out} already holds files; use --resume to continue the run there, "
                "or choose a new --out"
            )
        return
    try:
        old = read_json(out / "finetune.json")
    except FileNotFoundError:
        raise IGPTError(f"nothing to resume in {out}: it holds no fine-tuning run") from None
    if old.get("identity") != info["identity"] or old.get("n_classes") != info["n_classes"]:
        raise IGPTError(f"cannot resume {out}: it was fine-tuned from another model or data")
    for key in _RESUMABLE:
        was = old["finetune_config"].get(key)
        if was != info["finetune_config"][key]:
            raise IGPTError(f"cannot resume {out}: {key.replace('_', '-')} was {was} there")


def _finished(out: Path, steps: int) -> bool:
    """Whether ``out`` holds a run that stopped early or used a budget of ``steps``."""
    if not (out / "results.parquet").is_file():
        return False
    done = load_results(out / "results.parquet")
    return bool(done.converged.astype(bool).any()) or int(done.steps.max()) >= steps


def _holds_run(out: Path) -> bool:
    return out.exists() and any(p.name not in (SWEEP_DIR, SWEEP_CSV) for p in out.iterdir())


def finetune_model(
    model,
    data: str | DataSource | None,
    out,
    cfg: FinetuneConfig,
    *,
    labels_per_class: int | None = None,
    resume: bool = False,
    epochs: float | None = None,
    lr_sweep: int | None = None,
    sweep_steps: int | None = None,
    fit_head: HeadFitter | None = None,
    random_init: bool = False,
    command: str | None = None,
):
    """Fine-tune a checkpoint folder on a registered dataset (what ``igpt-eval finetune``
    runs): train on the train split, early-stop on val, report test. ``data`` is the
    dataset's name or a :class:`~igpt_eval.data.source.DataSource` (its split seed, default
    the model's pretraining run's; its data folder and token cache).

    With ``labels_per_class=K`` only K labelled images per class of the train split are
    used (drawn with ``cfg.seed``): a quarter of them (at most 20 per class) is held out
    for early stopping, the rest trained on (:func:`~igpt_eval.data.subsets.lowdata_split`);
    the standard val split is not used then, so the run sees K labels per class in all.
    ``epochs`` (passes over the training set) replaces ``cfg.steps`` when given. With
    ``lr_sweep=N`` the rate is chosen first by :func:`finetune_lr_sweep` (N rates from
    ``cfg.lr`` down, runs of ``sweep_steps`` steps, default a fifth of the budget).
    ``random_init`` trains the same architecture from the initialisation its pretraining
    run started from instead (the from-scratch control: does pretraining pay?).
    """
    net, palette, ident = open_model(model, device=cfg.device, random_weights=random_init)
    L = net.config.n_layer
    cfg.validate(L, 1)  # a bad layer is an error before any data is read
    data = DataSource.of(data)
    dataset, seed = run_defaults(data.name, ident, data.split_seed)
    n_px = net.config.n_px
    token_cache = data.token_cache

    def split(name):
        return load_dataset(dataset, split=name, n_px=n_px, data_dir=data.data_dir, seed=seed)

    ds_train, ds_test = split("train"), split("test")
    if len(np.unique(ds_train.labels)) < 2:
        raise IGPTError(f"{dataset} has fewer than two classes: it has no labels to learn")
    rows = val_rows = None
    if labels_per_class is not None:
        rows, val_rows = lowdata_split(ds_train.labels, labels_per_class, cfg.seed)
    tok = {s.split: load_tokens(s, palette, token_cache) for s in (ds_train, ds_test)}
    full = Labelled(tok["train"].tokens, ds_train.labels, ds_train.images)
    if rows is None:
        ds_val = split("val")
        val = Labelled(load_tokens(ds_val, palette, token_cache).tokens, ds_val.labels)
        train = full
    else:
        train, val = full.take(rows), full.take(val_rows)
    if not cfg.augment:
        train.images = None
    test = Labelled(tok["test"].tokens, ds_test.labels)
    if epochs is not None:
        per_epoch = len(train) / min(cfg.batch_size, len(train))
        cfg = dataclasses.replace(cfg, steps=max(1, round(epochs * per_epoch)))
    meta = dict(
        model=random_twin(ident["name"]) if random_init else ident["name"],  # the label
        model_kind=ModelKind.RANDOM if random_init else ModelKind.TRAINED,
        objective=net.config.objective,
        dataset=dataset,
        labels_per_class=labels_per_class,
    )
    identity = dict(
        weights_hash=ident.get("weights_hash"),
        palette_hash=palette.hash,
        dataset=dataset,
        train_fingerprint=ds_train.fingerprint,
        labels_per_class=labels_per_class,
    )
    kwargs = dict(n_classes=len(ds_train.classes), meta=meta, identity=identity,
                  resume=resume, fit_head=fit_head,
                  command=command)  # fmt: skip
    if lr_sweep:
        steps = sweep_steps or max(1, cfg.steps // 5)
        return finetune_lr_sweep(net, palette, train, val, test, cfg, out, max_runs=lr_sweep,
                                 start=cfg.lr, sweep_steps=steps, **kwargs)  # fmt: skip
    return run_finetune(net, palette, train, val, test, cfg, out, **kwargs)
