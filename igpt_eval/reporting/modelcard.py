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
from igpt_eval.model.checkpoint import run_split_seed
from igpt_eval.reporting.model_figures import completion_grid, loss_curve, read_log, save_png
from igpt_eval.reporting.probe_card import CARD
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


def _sweep_table(path: Path) -> list[str]:
    try:
        sweep = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise IGPTError(f"{path} is not a readable sweep table ({e})") from None
    lines = []
    if "steps" in sweep and sweep["steps"].notna().all():
        steps = ", ".join(str(int(x)) for x in sorted(set(sweep["steps"])))
        lines += [
            f"Each sweep run trained for {steps} steps (rates tried in the paper's order, "
            "stopping once the validation loss rose).",
            "",
        ]
    lines += ["| learning rate | final val loss (nats/token) | chosen |", "| --- | --- | --- |"]
    for r in sweep.itertuples():
        best = "yes" if str(getattr(r, "best", "")).lower() == "true" else ""
        lines.append(f"| {r.lr:g} | {_num(r.val_loss)} | {best} |")
    return lines


def _num(x, nd: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
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

    L = []  # the card, line by line
    L += _data_section(name, cfg, run, m.palette, m.n_train, m.n_test)
    L += _architecture_section(cfg, m.n_params)
    L += _objective_section(cfg.objective, cfg.mask_prob)
    L += _recipe_section(run, log, model_dir / "lr_sweep.csv")
    L += _results(m.metrics, m.baselines, cfg.objective, m.n_test)
    L += _figures_section(figures, m.why_no_completions, seed)
    L += _reproduce_section(run.get("command"), model_dir, reports_dir, name)

    card = model_dir / CARD
    with atomic_write(card, "w") as f:
        f.write("\n".join(L))
    return card


def _data_section(name, cfg, run: dict, palette, n_train: int, n_test: int) -> list[str]:
    """The title, the card's premise, and what the model was trained and measured on."""
    L = [f"# {name}: iGPT-{cfg.objective.upper()}", ""]
    L += [
        f"An Image GPT model ({cfg.objective.upper()} objective) trained with igpt-eval. Every "
        "number below was read from this folder's files or measured when the card was written.",
        "",
        "## Data",
        "",
        f"- dataset: `{run.get('dataset', 'not recorded')}`",
        f"- training split: {n_train:,} images; test split (all measurements below): "
        f"{n_test:,} images; validation during training: a seeded, stratified 10% "
        "of the original training set",
        f"- images: {cfg.n_px}×{cfg.n_px} pixels = {cfg.n_positions} tokens each, raster order",
        f"- palette: k = {cfg.vocab_size} colours"
        + (f" ({palette.channels}-channel, hash `{palette.hash}`)" if palette else ""),
    ]
    for key in ("train_fingerprint", "val_fingerprint"):
        if key in run:
            L.append(f"- {key.replace('_', ' ')}: `{run[key]}`")
    return L


def _architecture_section(cfg, n_params: int) -> list[str]:
    """The model's shape and the kind of blocks it is made of."""
    return [
        "",
        "## Architecture",
        "",
        f"- {cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads "
        f"({cfg.head_dim} per head), {n_params:,} parameters",
        "- GPT-2 pre-norm blocks with iGPT's RMS norm (no mean, no bias), quick-GELU MLP "
        "(4× width), no biases, learned positions, an untied zero-initialised output head",
    ]


def _objective_section(objective: str, mask_prob: float) -> list[str]:
    """What the model was trained to predict (AR or BERT)."""
    obj = (
        "autoregressive (AR): next-pixel cross-entropy at every position, causal attention, "
        "a learned start-of-sequence vector"
        if objective == "ar"
        else f"BERT: each pixel masked with probability {mask_prob:g} (its token embedding "
        "zeroed), bidirectional attention, cross-entropy on the masked pixels only"
    )
    return ["", "## Objective", "", f"- {obj}", ""]


def _recipe_section(run: dict, log: dict | None, sweep: Path) -> list[str]:
    """The optimiser and schedule from ``run.json``, the run's length and final losses from
    its log, the command, and the learning-rate sweep when there was one."""
    tc = run.get("train_config") or {}
    known = {k: v for k, v in tc.items() if k in TrainConfig.__dataclass_fields__}
    L = ["## Training recipe", ""]
    if known:
        warmup = known.get("warmup_steps")  # recorded as steps since the default changed
        how = (
            f"linear warm-up for {warmup} step{'s' if warmup != 1 else ''}"
            if warmup is not None
            else "linear warm-up (the trainer's default then; the run did not record it)"
        )
        L += [
            f"- Adam, betas {tuple(known.get('betas', ()))}, no weight decay, no dropout",
            f"- peak learning rate {known.get('lr'):g}; {how}, then cosine decay to 0",
            f"- {known.get('steps')} steps of {known.get('batch_size')} images"
            + (f" ({known['grad_accum']} micro-batches)" if known.get("grad_accum", 1) > 1 else "")
            + f"; bf16 autocast: {'yes' if known.get('bf16') else 'no'}; seed {known.get('seed')}"
            + f", split seed {run_split_seed(run)}"
            + (f"; {run['world_size']} processes" if run.get("world_size", 1) > 1 else ""),
        ]
        if known.get("grad_clip"):
            L.append(f"- gradient norm clipped at {known['grad_clip']:g}")
    else:
        L.append("- not recorded (this folder has no run.json)")
    if log is not None:
        L.append(
            f"- trained {log['steps']} steps"
            + (f" = {log['epochs']:.2f} epochs" if log["epochs"] is not None else "")
            + f"; wall time {_duration(log['seconds'])}"
        )
        L.append(
            f"- final train loss {_num(log['train_loss'])} nats/token (mean of the last "
            f"{log['train_tail']} steps); final validation loss "
            f"{_num(log['val_loss'])} nats/token (step {log['val_step']})"
        )
    L += ["", "Command:", "", "```bash", run.get("command") or "# not recorded", "```", ""]
    if sweep.is_file():
        L += ["### Learning-rate sweep", "", *_sweep_table(sweep), ""]
    return L


def _figures_section(figures: dict, why_no_completions: str | None, seed: int) -> list[str]:
    """The figures beside the card, or why one is missing."""
    L = ["## Figures", ""]
    if "loss_curve" in figures:
        L += ["Training curve (train loss per step and its moving average; validation loss):", ""]
        L += ["![training curve](loss_curve.png)", ""]
    else:
        L += ["No training curve: this folder has no train_log.csv.", ""]
    if "completions" in figures:
        L += [
            f"Completions of test images (top half given, bottom half sampled at temperature 1, "
            f"seed {seed}):",
            "",
            "![completions](completions.png)",
            "",
        ]
    else:
        L += [f"No completions: {why_no_completions}.", ""]
    return L


def _reproduce_section(command: str | None, model_dir: Path, reports_dir, name: str) -> list[str]:
    """The training command and the command that writes this card again."""
    again = f"igpt-eval model-card --model {model_dir}"
    if reports_dir is not None:
        again += f" --reports {reports_dir} --name {name}"
    L = ["## Reproduce", "", "```bash", command or "# the training command was not recorded"]
    return L + [again, "```", ""]


def _results(m: dict, b: dict, objective: str, n_test: int) -> list[str]:
    """The results section: the model's test loss against the baselines."""
    ln2 = math.log(2)
    acc = objective == "ar"

    def row(what, nats, accuracy=None):
        cells = [what, _num(nats), _num(nats / ln2)]
        return "| " + " | ".join(cells + ([_num(accuracy)] if acc else [])) + " |"

    L = ["## Results on the test split", ""]
    L.append(
        f"Measured on all {n_test:,} test images; losses in nats per token and bits per "
        "dimension (nats / ln 2)."
    )
    L += ["", "| predictor | nats/token | bits/dim |" + (" next-pixel accuracy |" if acc else "")]
    L.append("| --- | --- | --- |" + (" --- |" if acc else ""))
    L.append(row(f"this model ({objective.upper()})", m["loss"], m["accuracy"]))
    L.append(row("uniform over the palette", b["uniform"], None))
    L.append(row("unigram (train colour frequencies)", b["unigram_ce"], b["unigram_accuracy"]))
    L.append(
        row("previous pixel (train bigram / repeat it)", b["bigram_ce"], b["prev_pixel_accuracy"])
    )
    L += [
        "",
        f"Entropy of the test split's own colour frequencies: "
        f"{_num(b['test_unigram_entropy'])} nats/token.",
        "",
    ]
    if objective == "bert":
        L += [
            "The BERT loss scores masked pixels only (15% of them, a fixed seed), each "
            "predicted from both sides; the baselines score every pixel.",
            "",
        ]
    if m["loss"] >= b["unigram_ce"]:
        L += [
            f"**The test loss ({_num(m['loss'])}) is not below the unigram entropy "
            f"({_num(b['unigram_ce'])}): the model has learned no more than the colour "
            "frequencies.**",
            "",
        ]
    elif m["loss"] >= b["bigram_ce"]:
        L += [
            f"The test loss is below the unigram ({_num(b['unigram_ce'])}) but not below the "
            f"previous-pixel baseline ({_num(b['bigram_ce'])}).",
            "",
        ]
    return L
