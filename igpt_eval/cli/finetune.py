"""``igpt-eval finetune`` and ``igpt-eval lowdata``: classification fine-tuning, and the
paper's low-data comparison (linear probe vs fine-tuning vs raw pixels over K labels/class)."""

from __future__ import annotations

import argparse
from pathlib import Path

from igpt_eval.cli.common import (
    MODEL_HELP,
    add_device_flag,
    add_token_cache_flag,
    command_line,
    config_from_args,
    data_source_from_args,
    subcommand,
)


def _add_common(p, *, eval_every: int, lr: float, batch_size: int) -> None:
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding the dataset")
    p.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the train/val split (default: the model's pretraining run's)",
    )
    p.add_argument(
        "--objective",
        choices=["joint", "clf"],
        default="joint",
        help="joint = L_gen + L_clf (default, the paper's better one), clf = L_clf only",
    )
    p.add_argument(
        "--layer", type=int, default=None, help="attach the head at layer l (default: ln_f)"
    )
    p.add_argument(
        "--lr", type=float, default=lr, help=f"peak learning rate, constant after warm-up ({lr})"
    )

    p.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"images per step ({batch_size})"
    )
    p.add_argument(
        "--eval-every", type=int, default=eval_every, help="steps between validation scores"
    )
    p.add_argument("--patience", type=int, default=5, help="evaluations without improvement")
    p.add_argument(
        "--augment", action="store_true", help="reflection pad 4, random crop, horizontal flip"
    )
    add_device_flag(p)
    add_token_cache_flag(p)


@subcommand
def _add_finetune(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a model for classification (joint generative + classification loss)",
        description="Fine-tune a checkpoint with a linear head on the mean-pooled ln_f (or "
        "layer --layer), standardised with training statistics and folded into the saved "
        "head: Adam (0.9, 0.95), optional warm-up, then a constant learning rate (--lr-sweep "
        "re-searches it), early stopping on validation accuracy. The head starts at zero, or "
        "at the model's best linear probe (--init-from-probe). The best model (a checkpoint "
        "IGPT.classify runs), its log and tidy results (probe=finetune) are written to --out; "
        "--resume continues an interrupted run, or starts it when --out holds none yet.",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--dataset", default=None, help="dataset (default: the model's run.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="optimizer steps (default 500)")
    budget.add_argument("--epochs", type=float, default=None, help="passes over the train set")
    p.add_argument(
        "--labels-per-class",
        type=int,
        default=None,
        metavar="K",
        help="use only K labelled images per class of train (1/4 of them held out for early "
        "stopping instead of the val split)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the K-subset, order, masks")
    p.add_argument("--eval-images", type=int, default=None, help="val images per evaluation")
    p.add_argument(
        "--warmup-steps", type=int, default=0, help="linear warm-up steps (default 0: none)"
    )
    p.add_argument(
        "--lr-sweep",
        type=int,
        default=None,
        metavar="N",
        help="first try N rates from --lr down (x0.3, x0.1, ...) in short runs, keep the one "
        "with the best validation accuracy (the paper re-searches the fine-tuning rate)",
    )
    p.add_argument(
        "--sweep-steps", type=int, default=None, help="steps per sweep run (default: budget/5)"
    )
    p.add_argument(
        "--init-from-probe",
        type=Path,
        default=None,
        metavar="RESULTS",
        help="start the head at the model's L-BFGS linear probe: the layer chosen on "
        "validation and its C, from `igpt-eval probe` results (results.parquet) of this model",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="the from-scratch control: the same architecture from its pretraining run's "
        "initialisation, not the trained weights (results name it '<model> (random weights)')",
    )
    # The earlier name, so that recorded commands still run.
    p.add_argument(
        "--random-init", dest="random_weights", action="store_true", help=argparse.SUPPRESS
    )
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the head on standardised features (folded into the saved head; default on)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bf16 autocast (default: off; pays on GPUs and CPUs with bf16 units, and was "
        "slower than float32 on this project's AVX2-only CPU)",
    )
    _add_common(p, eval_every=50, lr=1e-3, batch_size=32)
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args) -> int:
    from igpt_eval.errors import IGPTError
    from igpt_eval.model.sources import model_name
    from igpt_eval.train.finetune_runs import LRSweep, finetune_model
    from igpt_eval.train.malloc import keep_freed_memory
    from igpt_eval.train.settings import FinetuneConfig

    keep_freed_memory()  # a training process: no page faults for every step's activations
    if args.epochs is not None and not args.epochs > 0:
        raise IGPTError(f"--epochs must be positive, got {args.epochs}")
    # --epochs, when given, replaces the step budget once the training set's size is known.
    steps = args.steps if args.steps is not None else FinetuneConfig.steps
    cfg = config_from_args(FinetuneConfig, args, steps=steps, random_init=args.random_weights)
    fit_head = None
    if args.init_from_probe is not None:
        cfg, fit_head = _probe_init(args, cfg)
    if args.lr_sweep is not None and args.lr_sweep < 1:
        raise IGPTError(f"--lr-sweep needs a number of rates >= 1, got {args.lr_sweep}")
    if args.sweep_steps is not None and not args.lr_sweep:
        raise IGPTError("--sweep-steps sets the length of --lr-sweep's runs; give --lr-sweep N")
    data = data_source_from_args(args, args.split_seed)
    sweep = LRSweep(args.lr_sweep, args.sweep_steps) if args.lr_sweep else None
    df = finetune_model(
        args.model,
        data,
        args.out,
        cfg,
        sweep=sweep,
        resume=args.resume,
        fit_head=fit_head,
        command=command_line(args),
    )
    acc = df[df.metric == "accuracy"].set_index("split")
    t = acc.loc["test"]
    print(
        f"fine-tuned {model_name(args.model)} for {int(t.steps)} steps "
        f"(best at step {int(t.n_iter)}"
        f"{', stopped early' if t.converged else ''}): val acc {100 * acc.loc['val'].value:.2f}%,"
        f" test acc {100 * t.value:.2f}% [{100 * t.ci_low:.2f}, {100 * t.ci_high:.2f}]"
        f" -> {args.out}"
    )
    return 0


def _probe_init(args, cfg):
    """``(cfg with layer, init_C and init_n set, the head fitter)`` from
    ``--init-from-probe``: the layer chosen on validation (or ``--layer``), its C and the
    size of the probe's training sample (the C is rescaled to the images the head is fitted
    on: :class:`~igpt_eval.train.settings.FinetuneConfig`)."""
    import dataclasses

    from igpt_eval.errors import IGPTError
    from igpt_eval.model.sources import resolve_model
    from igpt_eval.probes.logistic import probe_head
    from igpt_eval.results import load_results, probe_init

    if not args.init_from_probe.is_file():
        raise IGPTError(f"no probe results at {args.init_from_probe}")
    df = load_results(args.init_from_probe)
    source = resolve_model(args.model)
    weights_hash = source.weights_hash()  # the hash extraction records (no model load)
    layer, C, n = probe_init(df, source.label, weights_hash, args.layer)
    return dataclasses.replace(cfg, layer=layer, init_C=C, init_n=n), probe_head


@subcommand
def _add_lowdata(sub) -> None:
    from igpt_eval.studies.settings import LowDataConfig

    d = LowDataConfig()
    p = sub.add_parser(
        "lowdata",
        help="low-data table: linear probe vs fine-tuning vs raw pixels over K labels/class",
        description="For each K and seed, draw K labelled images per class of train (1/4 "
        "held out to choose C, the probe layer and the early-stopping point), then fit the "
        "L-BFGS linear probe on cached features, fine-tune, and fit a raw-pixel probe; all "
        "are scored on the same fixed stratified test subset. Prints mean ± std over seeds "
        "and writes tidy results, lowdata.md and lowdata.png/svg to --out. The default five "
        "seeds of the two shipped models took 87 minutes on a 2-core CPU; re-running the same "
        "command in the same --out continues where it stopped, and with more --seeds extends "
        "the study (the earlier seeds' runs are read back).",
    )
    p.add_argument(
        "--model", action="append", required=True, help="a model (repeatable): " + MODEL_HELP
    )
    p.add_argument("--dataset", default=None, help="dataset (default: the model's run.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--labels-per-class",
        type=int,
        nargs="+",
        default=list(d.ks),
        metavar="K",
        help="labelled images per class, one study per value",
    )
    p.add_argument("--k", dest="labels_per_class", type=int, nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--seeds", type=int, default=d.seeds, help="seeds per K (mean ± std)")
    p.add_argument(
        "--epochs",
        type=float,
        default=d.epochs,
        help=f"fine-tuning passes over each draw's training part ({d.epochs:g}), clipped to "
        f"[--min-steps, --max-steps]; early stopping may end a run sooner",
    )
    p.add_argument("--min-steps", type=int, default=d.min_steps, help=f"({d.min_steps})")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help=f"({d.max_steps})")
    p.add_argument(
        "--test-images",
        type=int,
        default=d.test_images,
        help=f"fixed stratified test subset for every method (0: all; default {d.test_images})",
    )
    p.add_argument(
        "--probe-results",
        type=Path,
        action="append",
        default=None,
        help="full-data probe results (results.parquet of `igpt-eval probe`) to take each "
        "model's best layer from; default: choose the layer on the K-subset's held-out part",
    )
    p.add_argument("--cache", type=Path, default=None, help="activation cache root")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bf16 autocast (default: off; pays only on CPUs with bf16 units or GPUs)",
    )
    p.add_argument("--no-finetune", action="store_true", help="probes only (fast)")
    _add_common(p, eval_every=d.eval_every, lr=d.lr, batch_size=d.batch_size)
    p.set_defaults(func=_cmd_lowdata)


def _cmd_lowdata(args) -> int:
    from igpt_eval.io import atomic_write
    from igpt_eval.reporting.figures import save_figure
    from igpt_eval.reporting.lowdata import lowdata_figure, lowdata_table
    from igpt_eval.studies.lowdata import lowdata_study
    from igpt_eval.studies.settings import LowDataConfig
    from igpt_eval.train.malloc import keep_freed_memory

    keep_freed_memory()  # many fine-tuning runs in one process
    cfg = config_from_args(
        LowDataConfig, args, ks=tuple(args.labels_per_class), finetune=not args.no_finetune
    )
    df = lowdata_study(
        args.model,
        data_source_from_args(args, args.split_seed),
        args.out,
        cfg,
        probe_results=args.probe_results,
        cache_root=args.cache,
    )
    table = lowdata_table(df)
    with atomic_write(args.out / "lowdata.md", "w") as f:
        f.write(table + "\n")
    files = save_figure(lowdata_figure(df), args.out / "lowdata")
    print(table)
    print(f"results: {args.out / 'results.parquet'} (+ .csv, lowdata.md); figure: {files[0]}")
    return 0
