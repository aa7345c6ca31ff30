"""Measured model cards: what a trained checkpoint folder is, and how well it predicts pixels.

:func:`write_model_card` reads what the pretrainer left in a checkpoint folder
(``config.json``, ``run.json``, ``train_log.csv``, optionally ``lr_sweep.csv``), measures the
model on the test split next to simple baselines, draws its figures, and writes
``MODEL_CARD.md``. No number in a card is typed in by hand: each one is read from those files or
measured when the card is written.

The measurements (test loss, bits per dimension, next-pixel accuracy, and the token
baselines beside them) are :mod:`igpt_eval.analysis.metrics`.

Example::

    card = write_model_card("runs/ar", train_tokens=tr.tokens, test_tokens=te.tokens,
                            reports_dir="reports", name="fmnist-ar")
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd

from igpt_eval.analysis.metrics import model_metrics, token_baselines
from igpt_eval.analysis.paired import DIFF, paired_lines
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.model.checkpoint import load_model, load_palette, read_run
from igpt_eval.reporting.model_figures import completion_grid, loss_curve, read_log, sample_grid
from igpt_eval.results import summary
from igpt_eval.train.pretrain import TrainConfig

__all__ = [
    "completion_grid",
    "loss_curve",
    "model_metrics",
    "sample_grid",
    "token_baselines",
    "write_model_card",
]

CARD = "MODEL_CARD.md"


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
    *,
    train_tokens,
    test_tokens,
    reports_dir: str | Path | None = None,
    name: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> Path:
    """Measure the checkpoint in ``model_dir`` and write its ``MODEL_CARD.md``; returns its path.

    ``train_tokens`` and ``test_tokens`` are the run's train split and the test split tokenised
    with the model's palette. Writes ``loss_curve.png`` (when there is a training log) and, for
    AR models with a palette, ``completions.png`` (test images completed from their top
    halves, seeded by ``seed``) beside the card, and copies both into ``reports_dir`` as
    ``<name>-loss_curve.png`` and ``<name>-completions.png`` (``name`` defaults to the folder's).
    """
    model_dir = Path(model_dir)
    name = name or model_dir.resolve().name
    model, palette = load_model(model_dir), load_palette(model_dir)
    cfg, run = model.config, read_run(model_dir)
    T = cfg.n_positions
    for what, t in (("train", train_tokens), ("test", test_tokens)):
        if t.ndim != 2 or t.shape[1] != T:
            raise IGPTError(f"{what} tokens have shape {t.shape}; this model needs [N, {T}]")

    metrics = model_metrics(model, test_tokens, batch_size)
    base = token_baselines(train_tokens, test_tokens, cfg.vocab_size)
    figures: dict[str, Path] = {}
    log_csv = model_dir / "train_log.csv"
    summary = _log_summary(log_csv) if log_csv.is_file() else None
    if summary is not None:
        figures["loss_curve"] = loss_curve(log_csv, model_dir / "loss_curve.png", title=name)
    if cfg.objective == "ar":
        why_no_completions = None if palette is not None else "the folder has no palette.npy"
    else:
        why_no_completions = (
            "a BERT model predicts masked pixels from both sides; it defines no left-to-right "
            "distribution to sample images from"
        )
    if why_no_completions is None:
        figures["completions"] = completion_grid(
            model, palette, test_tokens, n=8, seed=seed, out_png=model_dir / "completions.png"
        )
    if reports_dir is not None:
        reports_dir = Path(reports_dir)
        reports_dir.mkdir(parents=True, exist_ok=True)
        for key, src in figures.items():
            shutil.copyfile(src, reports_dir / f"{name}-{key}.png")

    tc = run.get("train_config") or {}
    known = {k: v for k, v in tc.items() if k in TrainConfig.__dataclass_fields__}
    warmup = None
    if known:
        per_epoch = max(1, len(train_tokens) // known.get("batch_size", 1))
        warmup = TrainConfig(**known).warmup(per_epoch)
    obj = (
        "autoregressive (AR): next-pixel cross-entropy at every position, causal attention, "
        "a learned start-of-sequence vector"
        if cfg.objective == "ar"
        else f"BERT: each pixel masked with probability {cfg.mask_prob:g} (its token embedding "
        "zeroed), bidirectional attention, cross-entropy on the masked pixels only"
    )
    command = run.get("command")
    L = []  # the card, line by line
    L += [f"# {name}: iGPT-{cfg.objective.upper()}", ""]
    L += [
        f"An Image GPT model ({cfg.objective.upper()} objective) trained with igpt-eval. Every "
        "number below was read from this folder's files or measured when the card was written.",
        "",
        "## Data",
        "",
        f"- dataset: `{run.get('dataset', 'not recorded')}`",
        f"- training split: {len(train_tokens):,} images; test split (all measurements below): "
        f"{len(test_tokens):,} images; validation during training: a seeded, stratified 10% "
        "of the original training set",
        f"- images: {cfg.n_px}×{cfg.n_px} pixels = {T} tokens each, raster order",
        f"- palette: k = {cfg.vocab_size} colours"
        + (f" ({palette.channels}-channel, hash `{palette.hash}`)" if palette else ""),
    ]
    for key in ("train_fingerprint", "val_fingerprint"):
        if key in run:
            L.append(f"- {key.replace('_', ' ')}: `{run[key]}`")
    L += [
        "",
        "## Architecture",
        "",
        f"- {cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads "
        f"({cfg.head_dim} per head), {model.n_params():,} parameters",
        "- GPT-2 pre-norm blocks with iGPT's RMS norm (no mean, no bias), quick-GELU MLP "
        "(4× width), no biases, learned positions, an untied zero-initialised output head",
        "",
        "## Objective",
        "",
        f"- {obj}",
        "",
        "## Training recipe",
        "",
    ]
    if known:
        L += [
            f"- Adam, betas {tuple(known.get('betas', ()))}, no weight decay, no dropout",
            f"- peak learning rate {known.get('lr'):g}; linear warm-up for {warmup} "
            f"step{'s' if warmup != 1 else ''}, then cosine decay to 0",
            f"- {known.get('steps')} steps of {known.get('batch_size')} images"
            + (f" ({known['grad_accum']} micro-batches)" if known.get("grad_accum", 1) > 1 else "")
            + f"; bf16 autocast: {'yes' if known.get('bf16') else 'no'}; seed {known.get('seed')}"
            + (f"; {run['world_size']} processes" if run.get("world_size", 1) > 1 else ""),
        ]
        if known.get("grad_clip"):
            L.append(f"- gradient norm clipped at {known['grad_clip']:g}")
    else:
        L.append("- not recorded (this folder has no run.json)")
    if summary is not None:
        L.append(
            f"- trained {summary['steps']} steps"
            + (f" = {summary['epochs']:.2f} epochs" if summary["epochs"] is not None else "")
            + f"; wall time {_duration(summary['seconds'])}"
        )
        L.append(
            f"- final train loss {_num(summary['train_loss'])} nats/token (mean of the last "
            f"{summary['train_tail']} steps); final validation loss "
            f"{_num(summary['val_loss'])} nats/token (step {summary['val_step']})"
        )
    L += ["", "Command:", "", "```bash", command or "# not recorded", "```", ""]
    sweep = model_dir / "lr_sweep.csv"
    if sweep.is_file():
        L += ["### Learning-rate sweep", "", *_sweep_table(sweep), ""]

    L += _results(metrics, base, cfg.objective, len(test_tokens))
    L += ["## Figures", ""]
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
    L += ["## Reproduce", "", "```bash", command or "# the training command was not recorded"]
    again = f"igpt-eval model-card --model {model_dir}"
    if reports_dir is not None:
        again += f" --reports {reports_dir} --name {name}"
    L += [again, "```", ""]

    card = model_dir / CARD
    with atomic_write(card, "w") as f:
        f.write("\n".join(L))
    return card


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


PROBE_HEADING = "## Linear probes"


def probe_section(results, model: str, source: str) -> str:
    """The card's linear-probe section for ``model``: one row per layer (test accuracy with
    its 95% CI, the C (L-BFGS) or learning rate (SGD) chosen on validation), the layer
    chosen on validation marked, then its paired differences to the last layer and to the
    raw pixels when the results hold them; from the tidy ``results`` (``source`` names the
    file, ``igpt-eval probe``/``compare`` output)."""
    mine = results[(results.model == model) & (results.probe.isin(["lbfgs", "sgd"]))]
    df = mine[mine.metric != DIFF]  # the paired-difference rows are read below
    if df.empty:
        raise IGPTError(f"{source} holds no probe results for {model!r}")
    if df[df.split == "test"].duplicated(["layer", "metric"]).any():
        raise IGPTError(
            f"{source} holds several probe runs of {model!r} (e.g. a low-data study's seeds); "
            "give the results of one igpt-eval probe or compare run"
        )
    s = summary(df)
    val = df[df.split == "val"].iloc[0]
    test = df[df.split == "test"].iloc[0]
    probe = df.probe.iloc[0]
    hyper = "learning rate" if probe == "sgd" else "C"
    lines = [
        PROBE_HEADING,
        "",
        f"Linear probes on every layer ({probe}, mean-pooled {val.site_kind} "
        f"features): {hyper} chosen on {int(val.n_eval):,} validation images after training "
        f"on {int(val.n_train):,}, refit on train + val, tested once on {int(test.n_eval):,} "
        f"images (from `{source}`).",
        "",
        f"| layer | site | test accuracy [95% CI] | {hyper} |",
        "| --- | --- | --- | --- |",
    ]
    for r in s.itertuples():
        mark = " (best on val)" if r.best else ""
        lines.append(
            f"| {r.layer}{mark} | {r.site} | {100 * r.test_acc:.2f}% "
            f"[{100 * r.ci_low:.2f}, {100 * r.ci_high:.2f}] | "
            f"{r.lr if probe == 'sgd' else r.C:.3g} |"
        )
    diffs = mine[(mine.metric == DIFF) & (mine.probe == probe)]
    if len(diffs):
        lines += ["", "Paired on the same test images (95% CI, McNemar's exact test):", ""]
        lines += [f"- {x}" for x in paired_lines(diffs)]
    return "\n".join(lines) + "\n"


def set_probe_section(model_dir: str | Path, results, model: str, source: str) -> Path:
    """Replace (or add, before the figures) the linear-probe section of ``model_dir``'s
    ``MODEL_CARD.md``; the rest of the card is left as it was."""
    card = Path(model_dir) / CARD
    if not card.is_file():
        raise IGPTError(f"{card} does not exist; write the card first (igpt-eval model-card)")
    text = card.read_text()
    section = probe_section(results, model, source)
    if PROBE_HEADING in text:
        head, _, rest = text.partition(PROBE_HEADING)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
        text = head + section + ("\n" + tail if tail else "")
    elif "\n## Figures" in text:
        head, _, tail = text.partition("\n## Figures")
        text = head + "\n" + section + "\n## Figures" + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with atomic_write(card, "w") as f:
        f.write(text)
    return card
