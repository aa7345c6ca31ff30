"""The card of a fine-tuned classifier (an ``igpt-eval finetune`` folder): what it is, how it
was trained, its learning curve and its test accuracy with the 95% interval, read from the
folder's own files (``finetune.json``, ``finetune_log.csv``, ``results.parquet``, and
``lr_sweep.csv`` when the rate was swept). Nothing is re-measured: the numbers are the run's.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write, read_json
from igpt_eval.reporting.figures import save_figure
from igpt_eval.results import load_results

CARD = "MODEL_CARD.md"
CURVE = "finetune_curve.png"


def is_finetune_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a fine-tuning run (its ``finetune.json``)."""
    return (Path(path) / "finetune.json").is_file()


def finetune_curve(log_csv: Path, out_png: Path, title: str | None = None) -> Path:
    """Validation accuracy (and the training loss) against the optimizer step."""
    import seaborn as sns
    from matplotlib.figure import Figure

    log = pd.read_csv(log_csv)
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(6, 4), dpi=120)
        ax = fig.add_subplot()
        ax.plot(log["step"], 100 * log["val_acc"], "o-", color="C3", ms=4, label="val accuracy")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation accuracy (%)")
        loss = ax.twinx()
        loss.plot(log["step"], log["clf_loss"], color="C0", alpha=0.6, label="train L_clf")
        loss.set_ylabel("training classification loss (nats)")
        loss.grid(False)
        lines = ax.get_legend_handles_labels()
        more = loss.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], frameon=True, loc="center right")
        if title:
            ax.set_title(title)
        fig.tight_layout()
    return save_figure(fig, Path(out_png).with_suffix(""), formats=("png",))[0]


def write_classifier_card(folder: str | Path, name: str | None = None) -> Path:
    """Write ``MODEL_CARD.md`` and ``finetune_curve.png`` into the fine-tuning folder."""
    folder = Path(folder)
    name = name or folder.resolve().name
    if not is_finetune_folder(folder):
        raise IGPTError(f"{folder} holds no fine-tuning run (finetune.json)")
    if not (folder / "results.parquet").is_file():
        raise IGPTError(f"the fine-tuning run in {folder} has not finished (no results.parquet)")
    info = read_json(folder / "finetune.json")
    df = load_results(folder / "results.parquet")
    acc = df[df.metric == "accuracy"].set_index("split")
    test, val = acc.loc["test"], acc.loc["val"]
    has_log = (folder / "finetune_log.csv").is_file()
    if has_log:
        finetune_curve(folder / "finetune_log.csv", folder / CURVE, title=f"fine-tuning {name}")
    cfg, ident = info["finetune_config"], info.get("identity", {})
    L = [
        f"# {name}: a fine-tuned iGPT classifier",
        "",
        f"`{test.model}` ({test.objective}) fine-tuned for {info['n_classes']}-way "
        f"classification of `{test.dataset}` with igpt-eval. Load it with "
        "`igpt_eval.model.load_model(folder)` and call `.classify(tokens)` on palette ids "
        "(`palette.npy`; `igpt-eval tokenize`). Every number below was read from this "
        "folder's files, written by the run itself.",
        "",
        "## Results",
        "",
        "| split | accuracy | 95% CI | images |",
        "| --- | --- | --- | --- |",
        f"| test | {100 * test.value:.2f}% | [{100 * test.ci_low:.2f}, {100 * test.ci_high:.2f}]"
        f" (bootstrap) | {int(test.n_eval):,} |",
        f"| validation (best, early stopping) | {100 * val.value:.2f}% | | {int(val.n_eval):,} |",
        "",
        f"The weights are those of step {int(test.n_iter)} of {int(test.steps)} (the best "
        f"validation accuracy{'; the run then stopped early' if bool(test.converged) else ''}).",
        "",
        "## Classifier",
        "",
        f"- head: `wclf` on the mean-pooled `{test.site}`"
        + (
            ", standardised with training statistics, folded into its weight and bias"
            if cfg.get("standardize")
            else ", no standardisation"
        )  # fmt: skip
        + "; started "
        + (f"at the L2 logistic probe (C = {cfg['init_C']:g})" if cfg.get("init_C") else "at 0"),
        f"- base weights: hash `{ident.get('weights_hash')}`; "
        f"palette `{ident.get('palette_hash')}`",
        f"- training data: {int(test.n_train):,} labelled images"
        + (
            f" ({ident['labels_per_class']} per class)"
            if ident.get("labels_per_class") is not None
            else ""
        ),
        "",
        "## Recipe",
        "",
        f"- objective: {_objective(cfg['objective'])}",
        f"- Adam, betas {tuple(cfg['betas'])}, no weight decay; learning rate {cfg['lr']:g}"
        + (
            f" after a linear warm-up of {cfg['warmup_steps']} steps"
            if cfg.get("warmup_steps")
            else ""
        )
        + ", then constant",  # fmt: skip
        f"- batch {cfg['batch_size']}; budget {int(test.steps)} steps; validation every "
        f"{cfg['eval_every']} steps, patience {cfg['patience']} evaluations"
        + ("; augmentation (pad 4, crop, flip)" if cfg.get("augment") else ""),
        f"- bf16 autocast: {'yes' if cfg.get('bf16') else 'no'}; seed {cfg['seed']}; "
        f"wall time {float(test.seconds):.0f} s",
        "",
    ]
    if (folder / "lr_sweep.csv").is_file():
        sweep = pd.read_csv(folder / "lr_sweep.csv")
        L += ["### Learning-rate sweep", "", "| learning rate | best val accuracy | chosen |",
              "| --- | --- | --- |"]  # fmt: skip
        L += [f"| {r.lr:g} | {100 * r.val_acc:.2f}% | {'yes' if r.best else ''} |"
              for r in sweep.itertuples()]  # fmt: skip
        L += ["", f"Each sweep run: {int(sweep.steps.iloc[0])} steps.", ""]
    if has_log:
        L += ["## Learning curve", "", f"![fine-tuning curve]({CURVE})", ""]
    L += ["## Reproduce", "", "```bash", info.get("command") or "# not recorded", "```", ""]
    with atomic_write(folder / CARD, "w") as f:
        f.write("\n".join(L))
    return folder / CARD


def _objective(objective: str) -> str:
    if objective == "joint":
        return "joint: L_gen (the pretraining loss) + L_clf (the paper's better one)"
    return "L_clf only (cross-entropy of the head)"
