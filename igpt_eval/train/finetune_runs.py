"""Fine-tuning runs: a folder guarded and recorded, data loaded, results written.

:func:`run_finetune` fine-tunes an in-memory model on :class:`~igpt_eval.data.subsets.Labelled`
arrays (what :mod:`igpt_eval.analysis.lowdata` calls once per draw); :func:`finetune_model` loads a
checkpoint folder and a registered dataset first (what ``igpt-eval finetune`` runs). The
training itself is :class:`igpt_eval.train.finetune.FineTuner`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from igpt_eval.cache.extraction import open_model, run_defaults
from igpt_eval.data import load_dataset, load_tokens
from igpt_eval.data.subsets import Labelled, lowdata_split
from igpt_eval.errors import IGPTError
from igpt_eval.io import read_json, write_json
from igpt_eval.model.checkpoint import has_resume
from igpt_eval.model.igpt import IGPT
from igpt_eval.results import save_results, to_frame
from igpt_eval.train.finetune import FinetuneConfig, FineTuner, with_classifier

# Settings a resumed run must share with the run it continues (the step budget may grow).
_RESUMABLE = (
    "batch_size",
    "lr",
    "betas",
    "objective",
    "layer",
    "augment",
    "eval_every",
    "patience",
    "eval_images",
    "bf16",
    "seed",
)


def run_finetune(
    model: IGPT,
    palette,
    train: Labelled,
    val: Labelled,
    test: Labelled,
    cfg: FinetuneConfig,
    out,
    *,
    n_classes: int | None = None,
    meta: dict | None = None,
    identity: dict | None = None,
    resume: bool = False,
    progress: bool = True,
):
    """Fine-tune ``model`` (a pretrained IGPT, palette ids from ``palette``) on ``train``,
    early-stopping on ``val``, into the folder ``out``; score the best model on ``test``.

    Returns the tidy results (also saved as ``out/results.parquet``/``.csv``). ``meta`` fills
    the model/objective/dataset columns, ``identity`` (data fingerprints) goes into
    ``finetune.json`` and must match when ``resume`` continues the run in ``out``. A new run
    refuses a folder that already holds files.
    """

    out = Path(out)
    if len(np.unique(train.labels)) < 2:
        raise IGPTError("the training labels hold fewer than two classes: nothing to classify")
    n_classes = n_classes or int(max(train.labels.max(), val.labels.max(), test.labels.max()) + 1)
    info = {
        "finetune_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()
        },
        "identity": identity or {},
        "n_classes": n_classes,
        "head_layer": model.config.n_layer if cfg.layer is None else cfg.layer,
    }
    _check_out(out, info, resume)
    net = with_classifier(model, n_classes)
    tuner = FineTuner(net, train, val, cfg, out, palette=palette)
    write_json(out / "finetune.json", info)
    if resume and has_resume(out):
        tuner.resume()
    else:
        if palette is not None:
            palette.save(out / "palette.npy")
        net.config.save(out / "config.json")
    tuner.fit(progress=progress)
    df = to_frame(tuner.test_rows(test, dict(meta or {})))
    save_results(df, out)
    return df


def _check_out(out: Path, info: dict, resume: bool) -> None:

    if not resume:
        if out.exists() and any(out.iterdir()):
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


def finetune_model(
    model,
    dataset: str | None,
    out,
    cfg: FinetuneConfig,
    *,
    labels_per_class: int | None = None,
    split_seed: int | None = None,
    data_dir=None,
    token_cache=None,
    resume: bool = False,
    progress: bool = True,
    epochs: float | None = None,
):
    """Fine-tune a checkpoint folder on a registered dataset (what ``igpt-eval finetune``
    runs): train on the train split, early-stop on val, report test.

    With ``labels_per_class=K`` only K labelled images per class of the train split are
    used (drawn with ``cfg.seed``): a quarter of them (at most 20 per class) is held out
    for early stopping, the rest trained on (:func:`~igpt_eval.data.subsets.lowdata_split`);
    the standard val split is not used then, so the run sees K labels per class in all.
    ``split_seed`` is the train/val split's seed (default: the model's pretraining run's).
    ``epochs`` (passes over the training set) replaces ``cfg.steps`` when given.
    """
    net, palette, ident = open_model(model, device=cfg.device)
    L = net.config.n_layer
    cfg.validate(L, 1)  # a bad layer is an error before any data is read
    dataset, seed = run_defaults(dataset, ident, split_seed)
    n_px = net.config.n_px

    def split(name):
        return load_dataset(dataset, split=name, n_px=n_px, data_dir=data_dir, seed=seed)

    ds_train, ds_test = split("train"), split("test")
    if len(np.unique(ds_train.labels)) < 2:
        raise IGPTError(f"{dataset} has fewer than two classes: it has no labels to learn")
    rows = val_rows = None
    if labels_per_class is not None:
        rows, val_rows = lowdata_split(ds_train.labels, labels_per_class, cfg.seed)
    tok = {
        s.split: load_tokens(s, palette, token_cache, progress=progress)
        for s in (ds_train, ds_test)
    }
    full = Labelled(tok["train"].tokens, ds_train.labels, ds_train.images)
    if rows is None:
        ds_val = split("val")
        val = Labelled(
            load_tokens(ds_val, palette, token_cache, progress=progress).tokens, ds_val.labels
        )
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
        model=Path(ident.get("model", "model")).name,
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
    return run_finetune(
        net,
        palette,
        train,
        val,
        test,
        cfg,
        out,
        n_classes=len(ds_train.classes),
        meta=meta,
        identity=identity,
        resume=resume,
        progress=progress,
    )
