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
from igpt_eval.reporting.templates import render
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
    sweep = None
    if (folder / "lr_sweep.csv").is_file():
        runs = pd.read_csv(folder / "lr_sweep.csv")
        rows = [
            dict(lr=f"{r.lr:g}", acc=f"{100 * r.val_acc:.2f}%", best=bool(r.best))
            for r in runs.itertuples()
        ]
        sweep = dict(rows=rows, steps=int(runs.steps.iloc[0]))
    text = render(
        "classifier_card",
        name=name,
        model=test.model,
        objective=test.objective,
        n_classes=info["n_classes"],
        dataset=test.dataset,
        test=dict(
            acc=f"{100 * test.value:.2f}%",
            ci=f"{100 * test.ci_low:.2f}, {100 * test.ci_high:.2f}",
            n=f"{int(test.n_eval):,}",
        ),
        val=dict(acc=f"{100 * val.value:.2f}%", n=f"{int(val.n_eval):,}"),
        step=int(test.n_iter),
        steps=int(test.steps),
        stopped_early=bool(test.converged),
        site=test.site,
        standardize=bool(cfg.get("standardize")),
        init_C=f"{cfg['init_C']:g}" if cfg.get("init_C") else None,
        weights_hash=ident.get("weights_hash"),
        palette_hash=ident.get("palette_hash"),
        n_train=f"{int(test.n_train):,}",
        labels_per_class=ident.get("labels_per_class"),
        objective_kind=cfg["objective"],
        betas=tuple(cfg["betas"]),
        lr=f"{cfg['lr']:g}",
        warmup_steps=cfg.get("warmup_steps"),
        batch_size=cfg["batch_size"],
        eval_every=cfg["eval_every"],
        patience=cfg["patience"],
        augment=bool(cfg.get("augment")),
        bf16=bool(cfg.get("bf16")),
        seed=cfg["seed"],
        seconds=f"{float(test.seconds):.0f}",
        sweep=sweep,
        curve=CURVE if has_log else None,
        command=info.get("command"),
    )
    with atomic_write(folder / CARD, "w") as f:
        f.write(text)
    return folder / CARD
