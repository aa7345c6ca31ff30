"""``igpt-eval pretrain``: train an iGPT model (AR or BERT) with the paper's recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from igpt_eval.cli.common import (
    add_dataset_flags,
    add_device_flag,
    add_token_cache_flag,
    command_line,
    parse_steps,
    positive_int,
    subcommand,
)
from igpt_eval.errors import IGPTError


@subcommand
def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain an iGPT model (AR or BERT objective)",
        description="Pretrain iGPT with the paper's recipe: Adam (0.9, 0.95), no weight decay, "
        "linear warm-up for one epoch, cosine decay to 0. Runs under torchrun for DDP.",
    )
    add_dataset_flags(
        p,
        overwrite=False,
        dataset="fashion-mnist",
        seed_help="seed of the initialisation, the batch order, the BERT masks and the palette "
        "fit (the split has --split-seed)",
    )
    p.add_argument("--model", default="mini", help="preset name or config JSON (default: mini)")
    p.add_argument(
        "--objective",
        choices=["ar", "bert"],
        default=None,
        help="training objective (default: the config's, else ar)",
    )
    p.add_argument(
        "--palette",
        type=Path,
        default=None,
        help="palette .npy (default: fit one with k=vocab_size on the train split)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="optimizer steps")
    budget.add_argument("--epochs", type=float, default=None, help="passes over the train split")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (all processes)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument(
        "--lr-sweep",
        type=int,
        default=0,
        metavar="N",
        help="sweep up to N rates 0.01, 0.003, 0.001, … and keep the best run",
    )
    p.add_argument(
        "--sweep-steps",
        type=positive_int,
        default=None,
        metavar="S",
        help="with --lr-sweep: sweep with S-step runs, then train the full run at the best "
        "rate (resumable with --resume)",
    )
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="linear warm-up steps (default: one epoch, at most a third of the steps)",
    )
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--grad-clip", type=float, default=None, help="clip gradient norm (off)")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for the forward pass (default: on on a GPU, off on the CPU)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--literal-ops",
        action="store_true",
        help="train on the literal ops (F.rms_norm, SDPA), not the CPU training path "
        "(igpt_eval.model.ops): slower, for anyone who suspects the fast path",
    )
    p.add_argument("--eval-every", type=int, default=200, help="steps between val losses")
    p.add_argument("--eval-images", type=int, default=2000, help="val images per evaluation")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument(
        "--snapshots",
        type=positive_int,
        default=None,
        metavar="N",
        help="keep the weights of N log-spaced steps plus the last under OUT/snapshots/ "
        "(for igpt-eval track)",
    )
    p.add_argument(
        "--snapshot-steps",
        type=parse_steps,
        default=None,
        metavar="S1,S2,...",
        help="keep the weights of these steps too (comma-separated; 0 = the untrained "
        "initialisation, a random-weights control)",
    )
    add_device_flag(p)
    add_token_cache_flag(p)
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args) -> int:
    from igpt_eval.data import load_dataset, load_tokens
    from igpt_eval.data.palette import Palette
    from igpt_eval.model.config import IGPTConfig
    from igpt_eval.model.devices import default_bf16
    from igpt_eval.model.record import RunRecord
    from igpt_eval.train import distributed as dist
    from igpt_eval.train.malloc import keep_freed_memory
    from igpt_eval.train.pretrain import TrainConfig, log_spaced_steps
    from igpt_eval.train.runs import lr_sweep, pretrain

    overrides = {}
    if args.objective:
        overrides["objective"] = args.objective
    if args.n_px:
        overrides["n_px"] = args.n_px
    model_cfg = IGPTConfig.resolve(args.model, **overrides)
    keep_freed_memory()  # a training process: no page faults for every step's activations
    dist.init(args.device)
    main = dist.is_main()

    def split(name):
        return load_dataset(
            args.dataset,
            split=name,
            n_px=model_cfg.n_px,
            data_dir=args.data_dir,
            seed=args.split_seed,
        )

    train, val = split("train"), split("val")
    if args.palette is not None:
        palette = Palette.load(args.palette)
    elif args.resume and (args.out / "palette.npy").is_file():
        palette = Palette.load(args.out / "palette.npy")
    else:
        palette = Palette.fit(train.images, model_cfg.vocab_size, seed=args.seed)
    model_cfg.check_palette(palette, "; use a matching --palette or --model")
    # Every process reads the same cache; rank 0 builds it first.
    tr, va = dist.main_first(
        lambda: [load_tokens(s, palette, args.token_cache) for s in (train, val)]
    )

    per_epoch = len(train) // args.batch_size
    steps = args.steps if args.steps is not None else None
    if args.epochs is not None:
        steps = max(1, round(args.epochs * per_epoch))
    if steps is None:
        steps = per_epoch
    snapshot_steps = set(args.snapshot_steps or ())
    if args.snapshots:
        snapshot_steps |= set(log_spaced_steps(args.snapshots, steps))
    cfg = TrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        grad_accum=args.grad_accum,
        grad_clip=args.grad_clip,
        bf16=default_bf16(args.device) if args.bf16 is None else args.bf16,
        compile=args.compile,
        literal_ops=args.literal_ops,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_images=args.eval_images,
        checkpoint_every=args.checkpoint_every,
        snapshot_steps=tuple(sorted(snapshot_steps)),
        device=args.device,
    )
    record = RunRecord(
        dataset=args.dataset,
        split_seed=args.split_seed,
        train_fingerprint=train.fingerprint,
        val_fingerprint=val.fingerprint,
        palette_hash=palette.hash,
        command=command_line(args),
        world_size=dist.world_size(),
    )
    common = dict(palette=palette, record=record)
    try:
        if args.sweep_steps is not None and not args.lr_sweep:
            raise IGPTError("--sweep-steps sets the length of --lr-sweep's runs; give --lr-sweep N")
        if args.lr_sweep:
            if args.resume and args.sweep_steps is None:
                raise IGPTError(
                    "--resume continues one run; with --lr-sweep it needs --sweep-steps "
                    "(sweep, then one full run)"
                )
            rows = lr_sweep(
                model_cfg, cfg, tr.tokens, va.tokens, args.out, max_runs=args.lr_sweep,
                sweep_steps=args.sweep_steps, resume=args.resume, **common,
            )  # fmt: skip
            if main:
                for r in rows:
                    mark = "  <- best" if r["best"] else ""
                    print(f"lr {r['lr']:<8g} val loss {r['val_loss']:.4f}{mark}")
        else:
            res = pretrain(
                model_cfg, cfg, tr.tokens, va.tokens, args.out, resume=args.resume, **common
            )
            if main:
                print(
                    f"trained {res['n_params']:,} parameters for {res['step']} steps in "
                    f"{res['seconds']:.0f} s; final val loss {res['val_loss']:.4f} nats/token "
                    f"-> {args.out}"
                )
    finally:
        dist.shutdown()
    return 0
