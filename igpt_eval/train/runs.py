"""Pretraining runs: start or resume one in a folder, or sweep the learning rate as the paper.

:func:`pretrain` is what ``igpt-eval pretrain`` calls once the data is tokenised. It guards the
output folder (a new run never writes into a folder holding another run; a resumed run must
match the run it continues) and records ``run.json`` beside the checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import shutil
from pathlib import Path

import torch

from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.igpt import IGPT
from igpt_eval.model.record import RunRecord
from igpt_eval.train import distributed as dist
from igpt_eval.train.pretrain import TrainConfig, Trainer

log = logging.getLogger(__name__)

# What must not change between a run and its resumption (the step budget may grow).
_IDENTITY = ("model_config", "objective", "train_fingerprint", "val_fingerprint", "palette_hash")
_RESUMABLE_SETTINGS = ("batch_size", "lr", "warmup_steps", "betas", "grad_accum", "seed")


def sweep_lrs(n: int, start: float = 0.01) -> list[float]:
    """The paper's sweep: 0.01, 0.003, 0.001, 0.0003, … (``n`` values)."""
    out, lr = [], start
    for i in range(n):
        out.append(float(f"{lr:.1g}"))
        lr = lr * (0.3 if i % 2 == 0 else 1 / 3)
    return out


def pretrain(
    model_cfg: IGPTConfig,
    train_cfg: TrainConfig,
    train_tokens,
    val_tokens,
    out: str | Path,
    *,
    palette=None,
    record: RunRecord | None = None,
    resume: bool = False,
) -> dict:
    """Train one model into ``out`` (or continue the run there); returns a summary dict.

    ``record`` says what the run read (dataset, split seed, fingerprints, palette hash) and
    how it was started (command, processes); with the model and training configs filled in
    it is ``run.json``, which a resumed run must match.
    """
    out = Path(out)
    warmup_given = train_cfg.warmup_steps is not None
    if not warmup_given:
        # Recorded as the number of steps, not "the default": the run's schedule must not
        # change if the default does (a resumed run, a model card written later).
        warmup = train_cfg.warmup(len(train_tokens))
        train_cfg = dataclasses.replace(train_cfg, warmup_steps=warmup)
    info = dataclasses.replace(
        record or RunRecord(),
        model_config=model_cfg.to_dict(),
        objective=model_cfg.objective,
        train_config=_jsonable(dataclasses.asdict(train_cfg)),
    )
    if resume and not (out / "run.json").is_file() and not _holds_files(out):
        # The same command serves the first start and every restart of a requeued job.
        if dist.is_main():
            log.info("no run in %s yet: starting it", out)
        resume = False
    if resume:
        _check_resumable(out, info, warmup_given)
        # Killed before its first checkpoint: the run starts again from step 0.
        resume = (out / "resume" / "LATEST").is_file()
    elif _holds_files(out) and dist.is_main():
        raise IGPTError(
            f"{out} already holds files; use --resume to continue the run there, "
            "or choose a new --out"
        )
    torch.manual_seed(train_cfg.seed)  # the initialisation
    model = IGPT(model_cfg)
    trainer = Trainer(model, train_tokens, val_tokens, train_cfg, out)
    if dist.is_main():
        # run.json first: from the moment a folder exists it says which run it holds.
        info.write(out)
    if resume:
        trainer.resume()
        if trainer.step >= train_cfg.steps and dist.is_main():
            log.info("the run in %s already finished (step %d)", out, trainer.step)
    elif dist.is_main():
        if palette is not None:
            palette.save(out / "palette.npy")
        model.config.save(out / "config.json")
    summary = trainer.fit()
    return {**summary, "out": str(out), "n_params": model.n_params()}


def _holds_files(out: Path) -> bool:
    """Whether ``out`` holds anything but a finished short sweep (which leaves the folder to
    the full run at its best rate: ``lr_sweep(sweep_steps=...)``)."""
    return out.exists() and any(p.name not in ("sweep", SWEEP_CSV) for p in out.iterdir())


def _check_resumable(out: Path, info: RunRecord, warmup_given: bool = True) -> None:
    run = out / "run.json"
    if not run.is_file():
        raise IGPTError(f"nothing to resume in {out}: it holds no run (no run.json)")
    old = RunRecord.read(out)
    for key in _IDENTITY:
        if getattr(old, key) != getattr(info, key):
            what = key.replace("_", " ")
            raise IGPTError(
                f"cannot resume {out}: its {what} differs from this command's "
                "(same model, data and palette are needed)"
            )
    was, now = old.train_config or {}, info.train_config or {}
    for key in _RESUMABLE_SETTINGS:
        if key == "warmup_steps" and was.get(key) is None:
            # Started before runs recorded their warm-up: only the user knows what it was.
            if warmup_given:
                continue
            raise IGPTError(
                f"cannot resume {out}: it was started before runs recorded their warm-up, "
                "under another default; pass the warm-up it used with --warmup-steps"
            )
        if was.get(key) != now.get(key):
            raise IGPTError(
                f"cannot resume {out}: --{key.replace('_', '-')} was {was.get(key)} in the "
                "original run"
            )


def lr_sweep(
    model_cfg: IGPTConfig,
    train_cfg: TrainConfig,
    train_tokens,
    val_tokens,
    out: str | Path,
    *,
    palette=None,
    record: RunRecord | None = None,
    max_runs: int = 8,
    sweep_steps: int | None = None,
    resume: bool = False,
) -> list[dict]:
    """Try 0.01, 0.003, 0.001, … in that order, each a run in ``out/sweep/lr-X``; stop once
    the final validation loss rises; then either copy the best run into ``out`` (sweep runs
    of the full length), or, with ``sweep_steps``, sweep with runs of that many steps (each
    with its own warm-up and cosine) and train the full run at the best rate in ``out``.

    A run that diverges counts as the worst possible loss (the sweep goes on to smaller
    rates). Writes ``out/lr_sweep.csv`` with one row per run tried. With ``resume`` every
    run (each sweep run, then the full one) resumes as :func:`pretrain` does: a finished
    run is read back, not repeated, so the same call continues after a kill at any point.
    """
    out = Path(out)
    if not resume and out.exists() and any(out.iterdir()):
        raise IGPTError(f"{out} already holds files; choose a new --out for the sweep")
    rows = _sweep(
        model_cfg, train_cfg, train_tokens, val_tokens, out, max_runs, sweep_steps,
        palette=palette, record=record, resume=resume,
    )  # fmt: skip
    if sweep_steps is not None:
        best = next(r for r in rows if r["best"])
        cfg = dataclasses.replace(train_cfg, lr=best["lr"])
        pretrain(model_cfg, cfg, train_tokens, val_tokens, out, palette=palette,
                 record=record, resume=True)  # fmt: skip
    return rows


SWEEP_CSV = "lr_sweep.csv"
_SWEEP_FIELDS = ["lr", "val_loss", "steps", "best", "run"]


def walk_rates(lrs, score) -> tuple[list[tuple[float, float]], float]:
    """The paper's sweep walk, shared by pretraining and fine-tuning: try the rates ``lrs``
    (largest first) in order, ``score(lr)`` each (lower is better; ``inf`` for a run that
    diverged), and stop once the score gets worse than the last finite one (smaller rates
    only get worse from there). Returns ``([(lr, score), ...], best lr)``."""
    tried: list[tuple[float, float]] = []
    for lr in lrs:
        tried.append((lr, score(lr)))
        finite = [v for _, v in tried[:-1] if math.isfinite(v)]
        if finite and tried[-1][1] > finite[-1]:
            break
    best, value = min(tried, key=lambda t: t[1])
    if not math.isfinite(value):
        raise IGPTError("every learning rate in the sweep diverged")
    return tried, best


def _sweep(model_cfg, train_cfg, train_tokens, val_tokens, out, max_runs, sweep_steps, *,
           palette, record, resume) -> list[dict]:  # fmt: skip
    def run_dir(lr: float) -> Path:
        return out / "sweep" / f"lr-{lr:g}"

    def steps(lr: float) -> TrainConfig:
        cfg = dataclasses.replace(train_cfg, lr=lr)
        if sweep_steps is not None:  # a short proxy run: no snapshots
            cfg = dataclasses.replace(cfg, steps=sweep_steps, snapshot_steps=())
        return cfg

    def score(lr: float) -> float:
        try:
            res = pretrain(model_cfg, steps(lr), train_tokens, val_tokens, run_dir(lr),
                           palette=palette, record=record, resume=resume)  # fmt: skip
        except IGPTError as e:
            if "diverged" not in str(e):
                raise
            return math.inf
        return res["val_loss"]

    tried, best_lr = walk_rates(sweep_lrs(max_runs), score)
    rows = [
        {"lr": lr, "val_loss": v, "steps": steps(lr).steps, "run": str(run_dir(lr))}
        for lr, v in tried
    ]
    best = next(r for r in rows if r["lr"] == best_lr)
    for r in rows:
        r["best"] = r is best
    if dist.is_main():
        with atomic_write(out / SWEEP_CSV, "w") as f:
            w = csv.DictWriter(f, _SWEEP_FIELDS)
            w.writeheader()
            w.writerows(rows)
    if dist.is_main() and sweep_steps is None:
        src = Path(best["run"])
        for item in src.iterdir():  # the best run becomes the folder's checkpoint
            dst = out / item.name
            if item.is_dir():
                shutil.copytree(item, dst, dirs_exist_ok=True)
            else:
                shutil.copy2(item, dst)
    return rows


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
