"""``igpt-eval track``: probe every layer of every training snapshot (the paper's Figure 3)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from igpt_eval.cli.common import (
    add_device_flag,
    data_source_from_args,
    parse_steps,
    refuse_overwrite,
    subcommand,
)
from igpt_eval.cli.probe import add_sample_flags, probe_settings_from_args


@subcommand
def _add_track(sub) -> None:
    from igpt_eval.studies.settings import TrackSettings

    d = TrackSettings().probe
    p = sub.add_parser(
        "track",
        help="probe every layer of every training snapshot (probe accuracy vs loss)",
        description="For each run folder (trained with pretrain --snapshots), probe every "
        "layer of every snapshot with one protocol, sample and seed (activation caches are "
        "reused), then write tidy results with step and val_loss columns and three figures: "
        "the best layer's test accuracy against validation loss (all runs on one axis), a "
        "layer x step heatmap, and the depth curves of all snapshots.",
    )
    p.add_argument(
        "--run",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="a pretraining run folder with snapshots/ (repeat for several runs)",
    )
    p.add_argument("--dataset", default=None, help="dataset (default: the run's run.json)")
    p.add_argument(
        "--snapshot-steps",
        type=parse_steps,
        default=None,
        metavar="STEPS",
        help="only the snapshots of these training steps, e.g. 0,100,300 (default: all)",
    )
    p.add_argument("--steps", dest="snapshot_steps", type=parse_steps, help=argparse.SUPPRESS)
    add_sample_flags(p, d.train_size, d.val_size, d.test_size)
    p.add_argument(
        "--batch-size", type=int, default=None, help="extraction batch size (default: the device's)"
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for extraction (default: on on a GPU, off on the CPU)",
    )
    add_device_flag(p)
    p.add_argument("--bert-masks", type=int, default=d.bert_masks, help="masks (BERT runs)")
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of the train/val split and of the probes (the runs' own seed to probe "
        "each on the split it was trained on)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for results and figures")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.set_defaults(func=_cmd_track)


def _cmd_track(args) -> int:
    from igpt_eval.io import atomic_write
    from igpt_eval.reporting.track import format_track, track_figures, track_markdown
    from igpt_eval.results import save_results
    from igpt_eval.studies.settings import TrackSettings
    from igpt_eval.studies.track import loss_accuracy_correlation, track_runs, track_summary

    refuse_overwrite(args.out / "results.parquet", args.overwrite)
    settings = TrackSettings(probe_settings_from_args(args), steps=args.snapshot_steps)
    df = track_runs(args.run, settings, dataset=data_source_from_args(args))
    summ = track_summary(df)
    corr = loss_accuracy_correlation(summ)
    save_results(df, args.out)
    save_results(summ, args.out, stem="track_summary")
    save_results(corr, args.out, stem="track_correlation")
    files = track_figures(df, summ, args.out)
    command = "igpt-eval " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "igpt-eval track"
    md = track_markdown(df, summ, source=str(args.out), command=command).replace(
        "## Training dynamics", "# Training dynamics", 1
    )
    with atomic_write(args.out / "README.md", "w") as f:
        f.write(md)
    print(format_track(summ, corr))
    print(f"results: {args.out / 'results.parquet'} (+ track_summary, track_correlation)")
    print(f"figures: {', '.join(str(f) for f in files if f.suffix == '.png')}")
    return 0
