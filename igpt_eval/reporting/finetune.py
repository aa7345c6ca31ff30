"""The fine-tuning section of a report: fine-tuned classifiers beside the linear probes and
the controls, every difference paired on the same test images.

Inputs are ``igpt-eval finetune`` folders (``results.parquet`` and ``predictions.npz``) and a
comparison (``igpt-eval compare``: each model's probes of every layer, the raw-pixel probe,
the random-weights twins), all scored on the same test images: fine-tuning scores the whole
test split, so run the comparison with ``--test-size all``. A fine-tuning folder whose test
images differ from the comparison's is one clear error, not a silently unpaired number.

Contrasts, each a paired bootstrap 95% CI and McNemar's exact test
(:func:`igpt_eval.stats.paired_difference`): every fine-tuned model − its own best linear
probe (layer chosen on validation) and − the raw pixels; a pretrained model fine-tuned −
the same architecture trained from scratch (``finetune --random-init``, named as its
random-weights twin) with the same recipe; and two pretrained models fine-tuned, one −
the other. Probe runs on the whole training split (``igpt-eval probe --train-size all
--test-size all``, ``full_probes``) add each model's best full-train probe: the bar the
paper sets a fine-tuned model against.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from igpt_eval.analysis.paired import format_difference
from igpt_eval.errors import IGPTError
from igpt_eval.names import PIXELS, random_twin, trained_of
from igpt_eval.predictions import Predictions, load_predictions, prediction_key
from igpt_eval.probes.paired import chosen
from igpt_eval.reporting.templates import render
from igpt_eval.results import load_results, probe_train_size
from igpt_eval.stats import paired_difference

FINETUNE = "finetune"


def load_finetunes(dirs) -> tuple[pd.DataFrame, Predictions]:
    """The results and test predictions of fine-tuning folders (one clear error for a
    folder that holds none, or whose test images differ from the others')."""
    frames, preds = [], Predictions()
    for d in map(Path, dirs):
        if not (d / "results.parquet").is_file():
            raise IGPTError(f"{d} holds no fine-tuning results (results.parquet)")
        df = load_results(d / "results.parquet")
        if "probe" not in df or set(df.probe) != {FINETUNE}:
            raise IGPTError(f"{d} holds results of another kind than igpt-eval finetune")
        preds.update(_predictions(d))
        frames.append(df.assign(source=str(d)))
    return pd.concat(frames, ignore_index=True), preds


def _predictions(d: Path) -> Predictions:
    """A folder's per-example test predictions, which every paired line needs."""
    p = load_predictions(d)
    if p is None:
        raise IGPTError(f"{d} has no predictions.npz: paired statistics need them")
    return p


def _test_row(df: pd.DataFrame) -> pd.Series:
    return df[(df.split == "test") & (df.metric == "accuracy")].iloc[0]


def load_full_probes(dirs) -> list[tuple[pd.DataFrame, Predictions, str]]:
    """``(results, predictions, folder)`` of ``igpt-eval probe`` folders whose probes were
    trained on the whole training split and tested on the whole test split."""
    return [(load_results(d), _predictions(d), str(d)) for d in map(Path, dirs)]


def finetune_section(
    ft: pd.DataFrame,
    ft_pred: Predictions,
    probes: pd.DataFrame,
    probe_pred: Predictions | None,
    full_probes=(),
) -> str:
    """Markdown for the fine-tuned classifiers ``ft`` (:func:`load_finetunes`) and the
    comparison ``probes`` with its predictions: a table of test accuracies, then the paired
    differences (see the module docstring; the words: ``templates/finetune.md``).
    ``full_probes``: :func:`load_full_probes`."""
    preds = Predictions().update(probe_pred)
    try:
        preds.update(ft_pred)
    except IGPTError:
        raise IGPTError(
            "the fine-tuned models were tested on other images than the comparison's probes; "
            "run igpt-eval compare with --test-size all (fine-tuning scores the whole test split)"
        ) from None
    best = {m: s[s.best].iloc[0] for (m, probe), s in chosen(probes).items() if probe == "lbfgs"}
    runs, sources = {}, {}  # model name -> (test row, prediction key); its folder
    for (model, source), g in ft.groupby(["model", "source"], sort=False):
        r = _test_row(g)
        runs[model] = (r, prediction_key(model, FINETUNE, r.site))
        sources[model] = Path(source)
    finetuned = [
        dict(
            model=model,
            acc=_acc(r),
            objective=r.finetune_objective,
            site=r.site,
            lr=f"{r.lr:g}",
            steps=int(r.steps),
            step=int(r.n_iter),
        )
        for model, (r, _) in runs.items()
    ]
    rows = [
        dict(model=model, acc=_acc(s, "test_acc"), layer=int(s.layer), n_train=None)
        for model, s in best.items()
    ]
    full = []  # (model, best row, predictions holding the fine-tunes and this probe run)
    for df, pred, source in full_probes:
        try:
            both = Predictions().update(ft_pred).update(pred)
        except IGPTError:
            raise IGPTError(
                f"{source} was tested on other images than the fine-tuned models; "
                "probe with --test-size all (fine-tuning scores the whole test split)"
            ) from None
        mine = {m: s for (m, probe), s in chosen(df).items() if probe == "lbfgs" and m in runs}
        if not mine:
            raise IGPTError(f"{source} holds no probes of a fine-tuned model ({', '.join(runs)})")
        for m, s in mine.items():
            top = s[s.best].iloc[0]
            full.append((m, top, both))
            n = f"{probe_train_size(df, m):,}"
            rows.append(dict(model=m, acc=_acc(top, "test_acc"), layer=int(top.layer), n_train=n))
    px = probes[(probes.model == PIXELS) & (probes.split == "test") & (probes.metric == "accuracy")]
    diffs = []  # the paired lines, in order; templates/finetune.md names each kind

    def diff(kind: str, a: str, b: str, preds: Predictions = preds, **names) -> None:
        if a in preds and b in preds:
            d = paired_difference(preds.correct(a), preds.correct(b))
            row = pd.Series(dict(value=d.diff, ci_low=d.ci_low, ci_high=d.ci_high,
                                 p_value=d.p_value))  # fmt: skip
            diffs.append(dict(kind=kind, text=format_difference(row), **names))

    pixels = prediction_key(PIXELS, PIXELS, PIXELS)
    for model, (_, key) in runs.items():
        if model in best:
            b = best[model]
            probe_key = prediction_key(model, "lbfgs", b.site)
            diff("probe", key, probe_key, model=model, layer=int(b.layer))
        for m, top, both in full:
            if m == model:
                top_key = prediction_key(model, "lbfgs", top.site)
                diff("full probe", key, top_key, both, model=model, layer=int(top.layer))
        diff("pixels", key, pixels, model=model)
        twin = random_twin(model)
        if twin in runs:
            diff("scratch", key, runs[twin][1], model=model)
            diffs.append(catch_up(model, sources[model], sources[twin]))
    pretrained = [m for m in runs if trained_of(m) is None]
    for i, a in enumerate(pretrained):
        for b in pretrained[i + 1 :]:
            diff("pair", runs[a][1], runs[b][1], model=a, other=b)
    return render(
        "finetune",
        finetuned=finetuned,
        probes=rows,
        pixels=_acc(px.iloc[0]) if len(px) else None,
        differences=diffs,
    )


def catch_up(model: str, pretrained: Path, scratch: Path) -> dict:
    """How soon the pretrained run's validation accuracy reached the from-scratch run's
    best (the one its early stopping kept), read from both runs' ``finetune_log.csv`` (the
    paper: pretrained iGPT matches from-scratch accuracy after about one epoch; the
    report's bar is at most a third of the steps): the target, the scratch run's steps,
    and the step (None: never) with its fraction of them. Validation is scored every
    ``eval_every`` steps, so the step is that coarse."""
    logs = {}
    for name, d in (("pretrained", pretrained), ("scratch", scratch)):
        f = d / "finetune_log.csv"
        if not f.is_file():
            raise IGPTError(f"{d} has no finetune_log.csv: the catch-up step needs both logs")
        logs[name] = pd.read_csv(f).dropna(subset=["val_acc"])
    a, b = logs["pretrained"], logs["scratch"]
    target, total = float(b.val_acc.max()), int(b.step.max())
    reached = a[a.val_acc >= target]
    out = dict(kind="catch up", model=model, target=f"{100 * target:.2f}%", total=total)
    if reached.empty:
        return out | dict(step=None)
    step = int(reached.step.iloc[0])
    return out | dict(step=step, fraction=f"{step / total:.2f}")


def _acc(r, col: str = "value") -> str:
    return f"{100 * r[col]:.2f}% [{100 * r.ci_low:.2f}, {100 * r.ci_high:.2f}]"
