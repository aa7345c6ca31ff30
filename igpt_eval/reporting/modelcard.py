"""Measured model cards: what a trained checkpoint folder is, and how well it predicts pixels.

:func:`write_model_card` reads what the pretrainer left in a checkpoint folder
(``run.json``, ``train_log.csv``, optionally ``lr_sweep.csv``) and what
:func:`~igpt_eval.studies.modelcard.measure_checkpoint` measured on the test split next to
simple baselines, draws its figures, and writes ``MODEL_CARD.md``. No number in a card is
typed in by hand: each one is read from those files or measured when the card is written,
and nothing here runs the model.

Example::

    m = measure_checkpoint("runs/ar", train_tokens=tr.tokens, test_tokens=te.tokens)
    card = write_model_card("runs/ar", m, reports_dir="reports", name="fmnist-ar")
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd

from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.model.record import RunRecord
from igpt_eval.reporting.model_figures import completion_grid, loss_curve, read_log, save_png
from igpt_eval.reporting.probe_card import CARD
from igpt_eval.reporting.templates import render
from igpt_eval.studies.modelcard import CheckpointMeasurements
from igpt_eval.train.pretrain import TrainConfig


# ------------------------------------------------------------------ the run's files
def _log_summary(log_csv: Path, tail: int = 50) -> dict:
    """Wall time, epochs seen, and final losses from ``train_log.csv``."""
    log = read_log(log_csv)
    val = log["val_loss"].dropna()
    return {
        "steps": int(log["step"].iloc[-1]),
        "seconds": float(log["seconds"].iloc[-1]) if "seconds" in log else None,
        "epochs": float(log["epoch"].iloc[-1]) if "epoch" in log else None,
        # One step's loss is noisy: average the last `tail` steps.
        "train_loss": float(log["train_loss"].tail(tail).mean()),
        "train_tail": min(tail, len(log)),
        "val_loss": float(val.iloc[-1]) if len(val) else None,
        "val_step": int(log.loc[val.index[-1], "step"]) if len(val) else None,
    }


def _sweep(path: Path) -> dict:
    """The learning-rate sweep's rows (rate, final validation loss, chosen) and the steps
    each run trained for (None when the table does not record them)."""
    try:
        sweep = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise IGPTError(f"{path} is not a readable sweep table ({e})") from None
    steps = None
    if "steps" in sweep and sweep["steps"].notna().all():
        steps = ", ".join(str(int(x)) for x in sorted(set(sweep["steps"])))
    rows = [
        dict(
            lr=f"{r.lr:g}",
            val_loss=_num(r.val_loss),
            best=str(getattr(r, "best", "")).lower() == "true",
        )
        for r in sweep.itertuples()
    ]
    return dict(steps=steps, rows=rows)


def _num(x, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 60:
        return f"{seconds:.1f} s"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{seconds:.0f} s ({h}h {m:02d}m {s:02d}s)"


# ------------------------------------------------------------------ the card
def write_model_card(
    model_dir: str | Path,
    measured: CheckpointMeasurements,
    *,
    reports_dir: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Write the ``MODEL_CARD.md`` of the checkpoint in ``model_dir`` from what was
    ``measured`` there (:func:`~igpt_eval.studies.modelcard.measure_checkpoint`); returns its
    path. Writes ``loss_curve.png`` (when there is a training log) and ``completions.png``
    (when there are completions) beside the card, and copies both into ``reports_dir`` as
    ``<name>-loss_curve.png`` and ``<name>-completions.png`` (``name`` defaults to the
    folder's)."""
    model_dir = Path(model_dir)
    name = name or model_dir.resolve().name
    m = measured
    cfg, run = m.config, m.run
    log_csv = model_dir / "train_log.csv"
    log = _log_summary(log_csv) if log_csv.is_file() else None
    figures: dict[str, Path] = {}
    if log is not None:
        drawn = loss_curve(log_csv, title=name)
        figures["loss_curve"] = save_png(drawn, model_dir / "loss_curve.png")
    if m.completions is not None:
        drawn = completion_grid(m.completions)
        figures["completions"] = save_png(drawn, model_dir / "completions.png")
    if reports_dir is not None:
        reports_dir = Path(reports_dir)
        reports_dir.mkdir(parents=True, exist_ok=True)
        for key, src in figures.items():
            shutil.copyfile(src, reports_dir / f"{name}-{key}.png")
    seed = m.completions.sampling.seed if m.completions is not None else 0
    text = render(
        "model_card",
        name=name,
        objective=cfg.objective,
        **_data(cfg, run, m.palette, m.n_train, m.n_test),
        n_layer=cfg.n_layer,
        n_embd=cfg.n_embd,
        n_head=cfg.n_head,
        head_dim=cfg.head_dim,
        n_params=f"{m.n_params:,}",
        mask_prob=f"{cfg.mask_prob:g}",
        recipe=_recipe(run),
        log=None if log is None else _log_values(log),
        command=run.command,
        sweep=_sweep(model_dir / "lr_sweep.csv")
        if (model_dir / "lr_sweep.csv").is_file()
        else None,
        **_results(m.metrics, m.baselines),
        loss_curve="loss_curve" in figures,
        completions="completions" in figures,
        why_no_completions=m.why_no_completions,
        seed=seed,
        model_dir=model_dir,
        reports_dir=reports_dir,
    )
    card = model_dir / CARD
    with atomic_write(card, "w") as f:
        f.write(text)
    return card


def _data(cfg, run: RunRecord, palette, n_train: int, n_test: int) -> dict:
    """What the model was trained and measured on."""
    return dict(
        dataset=run.dataset,
        n_train=f"{n_train:,}",
        n_test=f"{n_test:,}",
        n_px=cfg.n_px,
        n_positions=cfg.n_positions,
        colours=cfg.vocab_size,
        palette=None if palette is None else dict(channels=palette.channels, hash=palette.hash),
        train_fingerprint=run.train_fingerprint,
        val_fingerprint=run.val_fingerprint,
    )


def _recipe(run: RunRecord) -> dict | None:
    """The optimiser and schedule from ``run.json`` (None when it records none)."""
    tc = run.train_config or {}
    known = {k: v for k, v in tc.items() if k in TrainConfig.__dataclass_fields__}
    if not known:
        return None
    clip = known.get("grad_clip")
    return dict(
        betas=tuple(known.get("betas", ())),
        lr=f"{known.get('lr'):g}",
        warmup=known.get("warmup_steps"),  # recorded as steps since the default changed
        steps=known.get("steps"),
        batch_size=known.get("batch_size"),
        grad_accum=known.get("grad_accum", 1),
        bf16=bool(known.get("bf16")),
        seed=known.get("seed"),
        split_seed=run.data_seed,
        world_size=run.world_size or 1,
        grad_clip=f"{clip:g}" if clip else None,
    )


def _log_values(log: dict) -> dict:
    """The run's length and final losses (:func:`_log_summary`), formatted."""
    return dict(
        steps=log["steps"],
        epochs=None if log["epochs"] is None else f"{log['epochs']:.2f}",
        duration=_duration(log["seconds"]),
        train_loss=_num(log["train_loss"]),
        train_tail=log["train_tail"],
        val_loss=_num(log["val_loss"]),
        val_step=log["val_step"],
    )


def _results(m: dict, b: dict) -> dict:
    """The model's test loss beside the baselines' (nats/token, bits/dim, next-pixel
    accuracy), and the first baseline it is not below (``not_below``; None: both)."""
    ln2 = math.log(2)

    def row(nats, accuracy=None):
        return dict(nats=_num(nats), bits=_num(nats / ln2), accuracy=_num(accuracy))

    not_below = None
    if m["loss"] >= b["unigram_ce"]:
        not_below = "unigram"
    elif m["loss"] >= b["bigram_ce"]:
        not_below = "previous pixel"
    return dict(
        model=row(m["loss"], m["accuracy"]),
        uniform=row(b["uniform"]),
        unigram=row(b["unigram_ce"], b["unigram_accuracy"]),
        bigram=row(b["bigram_ce"], b["prev_pixel_accuracy"]),
        test_entropy=_num(b["test_unigram_entropy"]),
        not_below=not_below,
    )
