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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from igpt_eval.data import load_dataset, load_tokens
from igpt_eval.data.source import DataSource
from igpt_eval.data.subsets import Labelled, LabelledSplits, lowdata_split
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write, read_json, write_json
from igpt_eval.model.checkpoint import has_resume, load_model
from igpt_eval.model.igpt import IGPT
from igpt_eval.model.loading import open_model
from igpt_eval.model.sites import site_name
from igpt_eval.names import Metric, ModelKind, Probe, random_twin
from igpt_eval.predictions import Predictions, prediction_key
from igpt_eval.results import load_results, row, save_results, to_frame
from igpt_eval.stats import bootstrap_accuracy_ci
from igpt_eval.train.finetune import FineTuner, HeadFitter, with_classifier
from igpt_eval.train.runs import sweep_lrs, walk_rates
from igpt_eval.train.settings import FinetuneConfig

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


@dataclass(frozen=True)
class FinetuneRecord:
    """What a fine-tuning run records besides its settings (``finetune.json``, its rows)."""

    columns: dict = field(default_factory=dict)  # its rows' model/objective/dataset columns
    identity: dict = field(default_factory=dict)  # weights and data: a resume must match
    command: str | None = None  # the command that started it, for the model card


@dataclass(frozen=True)
class LRSweep:
    """The paper re-searches the fine-tuning rate: ``runs`` short runs from the config's rate
    down (×0.3, ×0.1, …), of ``steps`` steps each (None: a fifth of the budget)."""

    runs: int = 4
    steps: int | None = None


def run_finetune(
    model: IGPT,
    palette,
    data: LabelledSplits,
    cfg: FinetuneConfig,
    out,
    *,
    record: FinetuneRecord | None = None,
    resume: bool = False,
    fit_head: HeadFitter | None = None,
):
    """Fine-tune ``model`` (a pretrained IGPT, palette ids from ``palette``) on
    ``data.train``, early-stopping on ``data.val``, into the folder ``out``; score the best
    model on ``data.test`` (``None``: no test rows; a learning-rate sweep's runs are scored
    on validation only).

    Returns the tidy results (also saved as ``out/results.parquet``/``.csv``). ``record``
    fills the model/objective/dataset columns and ``finetune.json``; its ``identity`` (data
    fingerprints) must match when ``resume`` continues the run in ``out``. A new run
    refuses a folder that already holds files (a finished learning-rate sweep aside). A
    finished run in ``out`` is read back when ``resume`` is set. ``fit_head`` fits the
    probe that initialises the head when ``cfg.init_C`` is set
    (:data:`~igpt_eval.train.finetune.HeadFitter`).
    """
    out, record = Path(out), record or FinetuneRecord()
    if len(np.unique(data.train.labels)) < 2:
        raise IGPTError("the training labels hold fewer than two classes: nothing to classify")
    n_classes = data.classes()
    cfg = cfg.for_train(len(data.train))
    info = {
        "finetune_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()
        },
        "identity": record.identity,
        "n_classes": n_classes,
        "head_layer": model.config.n_layer if cfg.layer is None else cfg.layer,
        "command": record.command,  # for the model card; not part of the run's identity
    }
    _check_out(out, info, resume)
    if resume and _finished(out, cfg.steps):
        log.info("the fine-tuning run in %s already finished: its results", out)
        return load_results(out / "results.parquet")  # read back, not repeated
    bias = cfg.standardize or cfg.init_C is not None  # folding the centring needs a bias
    net = with_classifier(model, n_classes, cfg.layer, bias=bias)
    tuner = FineTuner(net, data.train, data.val, cfg, out, palette=palette, fit_head=fit_head)
    write_json(out / "finetune.json", info)
    if resume and has_resume(out):
        tuner.resume()
    else:
        tuner.prepare()
        if palette is not None:
            palette.save(out / "palette.npy")
        net.config.save(out / "config.json")
    tuner.fit()
    rows, predictions = test_rows(tuner, data.test, dict(record.columns))
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
    common = row(
        meta,
        layer=tuner.layer,
        site=site_name(tuner.layer, "ln_1", L),
        site_kind="ln_1",
        probe=Probe.FINETUNE,
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
    val = row(common, split="val", n_eval=len(tuner.early_stopping_set()))
    rows = [
        row(val, metric=Metric.ACCURACY, value=b.acc),
        row(val, metric=Metric.LOSS, value=b.loss),
    ]
    predictions = Predictions()
    if test is None:
        return rows, predictions
    saved = load_model(tuner.out, device=cfg.device)
    d = saved.config.n_embd
    pred, losses = tuner.predict(test, saved, (torch.zeros(d), torch.ones(d)))
    correct = pred == np.asarray(test.labels)
    lo, hi = bootstrap_accuracy_ci(correct, n_boot=n_boot, seed=cfg.seed)
    tst = row(common, split="test", n_eval=len(test))
    predictions.add(prediction_key(meta.get("model", "model"), "finetune", common["site"]),
                    pred, np.asarray(test.labels))  # fmt: skip
    rows += [
        row(tst, metric=Metric.ACCURACY, value=float(correct.mean()), ci_low=lo, ci_high=hi),
        row(tst, metric=Metric.LOSS, value=float(losses.mean())),
    ]
    return rows, predictions


def finetune_lr_sweep(
    model: IGPT,
    palette,
    data: LabelledSplits,
    cfg: FinetuneConfig,
    out,
    sweep: LRSweep,
    *,
    record: FinetuneRecord | None = None,
    resume: bool = False,
    fit_head: HeadFitter | None = None,
):
    """Choose the rate, then fine-tune at it: ``sweep.runs`` runs at most of ``sweep.steps``
    steps at ``cfg.lr``, ``cfg.lr``·0.3, ``cfg.lr``·0.1, … (each in ``out/sweep/lr-X``,
    walked as pretraining's sweep is: :func:`~igpt_eval.train.runs.walk_rates`), scored by
    their best validation accuracy; then the full run at the best rate in ``out``. Writes
    ``out/lr_sweep.csv``; returns the full run's results. ``record`` and ``fit_head`` are
    :func:`run_finetune`'s; ``resume`` continues an interrupted sweep."""
    out = Path(out)
    if not resume and out.exists() and any(out.iterdir()):
        raise IGPTError(f"{out} already holds files; choose a new --out for the sweep")
    cfg = cfg.for_train(len(data.train))
    steps = min(sweep.steps or max(1, cfg.steps // 5), cfg.steps)
    # Each run: read back when finished, resumed, or started.
    run = dict(record=record, resume=True, fit_head=fit_head)
    val_only = dataclasses.replace(data, test=None)  # validation decides the rate

    def score(lr: float) -> float:
        short = dataclasses.replace(cfg, lr=lr, steps=steps)
        try:
            df = run_finetune(model, palette, val_only, short, out / SWEEP_DIR / f"lr-{lr:g}",
                              **run)  # fmt: skip
        except IGPTError as e:
            if "diverged" not in str(e):
                raise
            return math.inf
        return -float(df[(df.split == "val") & (df.metric == "accuracy")].value.iloc[0])

    tried, best = walk_rates(sweep_lrs(sweep.runs, cfg.lr), score)
    with atomic_write(out / SWEEP_CSV, "w") as f:
        w = csv.writer(f)
        w.writerow(["lr", "val_acc", "steps", "best"])
        for lr, v in tried:
            w.writerow([lr, -v if math.isfinite(v) else "", steps, lr == best])
    return run_finetune(model, palette, data, dataclasses.replace(cfg, lr=best), out, **run)


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
    sweep: LRSweep | None = None,
    resume: bool = False,
    fit_head: HeadFitter | None = None,
    command: str | None = None,
):
    """Fine-tune a checkpoint folder on a registered dataset (what ``igpt-eval finetune``
    runs): train on the train split, early-stop on val, report test. ``data`` is the
    dataset's name or a :class:`~igpt_eval.data.source.DataSource` (its split seed, default
    the model's pretraining run's; its data folder and token cache).

    With ``cfg.labels_per_class=K`` only K labelled images per class of the train split are
    used (drawn with ``cfg.seed``): a quarter of them (at most 20 per class) is held out
    for early stopping, the rest trained on (:func:`~igpt_eval.data.subsets.lowdata_split`);
    the standard val split is not used then, so the run sees K labels per class in all.
    ``cfg.random_init`` trains the same architecture from the initialisation its pretraining
    run started from instead (the from-scratch control: does pretraining pay?). With a
    ``sweep`` the rate is chosen first (:func:`finetune_lr_sweep`). ``command`` is recorded
    in ``finetune.json``.
    """
    K = cfg.labels_per_class
    net, palette, ident = open_model(model, device=cfg.device, random_weights=cfg.random_init)
    L = net.config.n_layer
    cfg.validate(L, 1)  # a bad layer is an error before any data is read
    data = DataSource.of(data)
    dataset, seed = ident.data(data.name, data.split_seed)
    n_px = net.config.n_px
    token_cache = data.token_cache

    def split(name):
        return load_dataset(dataset, split=name, n_px=n_px, data_dir=data.data_dir, seed=seed)

    ds_train, ds_test = split("train"), split("test")
    if len(np.unique(ds_train.labels)) < 2:
        raise IGPTError(f"{dataset} has fewer than two classes: it has no labels to learn")
    rows = val_rows = None
    if K is not None:
        rows, val_rows = lowdata_split(ds_train.labels, K, cfg.seed)
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
    splits = LabelledSplits(train, val, test, n_classes=len(ds_train.classes))
    columns = dict(
        model=random_twin(ident.name) if cfg.random_init else ident.name,  # the label
        model_kind=ModelKind.RANDOM if cfg.random_init else ModelKind.TRAINED,
        objective=net.config.objective,
        dataset=dataset,
        labels_per_class=K,
    )
    identity = dict(
        weights_hash=ident.weights_hash,
        palette_hash=palette.hash,
        dataset=dataset,
        train_fingerprint=ds_train.fingerprint,
        labels_per_class=K,
    )
    run = dict(record=FinetuneRecord(columns, identity, command), resume=resume,
               fit_head=fit_head)  # fmt: skip
    if sweep is not None:
        return finetune_lr_sweep(net, palette, splits, cfg, out, sweep, **run)
    return run_finetune(net, palette, splits, cfg, out, **run)
