"""What a model card measures: a checkpoint run on its test split (:func:`measure_checkpoint`).

The card itself (:func:`igpt_eval.reporting.modelcard.write_model_card`) is drawn from this
record and the folder's files, and runs no model: the test loss, bits per dimension and
next-pixel accuracy beside the token baselines (:mod:`igpt_eval.analysis.metrics`), and for
an AR model with a palette, completions of test images (:mod:`igpt_eval.studies.samples`).

    m = measure_checkpoint("runs/ar", train_tokens=tr.tokens, test_tokens=te.tokens)
    write_model_card("runs/ar", m, reports_dir="reports")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from igpt_eval.analysis.metrics import model_metrics, token_baselines
from igpt_eval.data.palette import Palette
from igpt_eval.errors import IGPTError
from igpt_eval.model.checkpoint import load_model, load_palette
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.record import RunRecord
from igpt_eval.studies.samples import Completions, Sampling, complete_images


@dataclass(frozen=True)
class CheckpointMeasurements:
    """A checkpoint measured for its card: its config, run record, palette and size; the
    metrics on the test tokens and the token baselines; completions of the first test images
    (None, with the reason in ``why_no_completions``, for a BERT model or no palette)."""

    config: IGPTConfig
    run: RunRecord
    palette: Palette | None
    n_params: int
    n_train: int
    n_test: int
    metrics: dict
    baselines: dict
    completions: Completions | None
    why_no_completions: str | None


def measure_checkpoint(
    model_dir: str | Path, *, train_tokens, test_tokens, seed: int = 0, batch_size: int = 256
) -> CheckpointMeasurements:
    """Run the checkpoint in ``model_dir`` on ``test_tokens`` (the test split tokenised with
    its palette; ``train_tokens``, its training split, give the baselines) and, for an AR
    model with a palette, complete 8 test images from their top halves (seeded by ``seed``)."""
    model_dir = Path(model_dir)
    model, palette = load_model(model_dir), load_palette(model_dir)
    cfg = model.config
    T = cfg.n_positions
    for what, t in (("train", train_tokens), ("test", test_tokens)):
        if t.ndim != 2 or t.shape[1] != T:
            raise IGPTError(f"{what} tokens have shape {t.shape}; this model needs [N, {T}]")
    metrics = model_metrics(model, test_tokens, batch_size)
    why_not = _why_no_completions(cfg.objective, palette)
    completions = None
    if why_not is None:
        completions = complete_images(model, palette, test_tokens, sampling=Sampling(seed=seed))
    return CheckpointMeasurements(
        config=cfg,
        run=RunRecord.read(model_dir),
        palette=palette,
        n_params=model.n_params(),
        n_train=len(train_tokens),
        n_test=len(test_tokens),
        metrics=metrics,
        baselines=token_baselines(train_tokens, test_tokens, cfg.vocab_size),
        completions=completions,
        why_no_completions=why_not,
    )


def _why_no_completions(objective: str, palette) -> str | None:
    """Why the card shows no completions (``None``: it shows them)."""
    if objective == "ar":
        return None if palette is not None else "the folder has no palette.npy"
    return (
        "a BERT model predicts masked pixels from both sides; it defines no left-to-right "
        "distribution to sample images from"
    )
