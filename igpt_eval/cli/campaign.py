"""``igpt-eval campaign``: pretrain for a wall-clock budget, then probe, track and fine-tune,
into one small folder (:mod:`igpt_eval.studies.campaign`; docs/campaign.md)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from igpt_eval.cli.common import add_device_flag, command_line, subcommand
from igpt_eval.errors import IGPTError
from igpt_eval.io import read_json
from igpt_eval.studies.settings import SMOKE_CAMPAIGN, CampaignSettings


def _minutes(text: str, zero_ok: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value > 0 or (zero_ok and value == 0))):
        what = "a number of minutes >= 0" if zero_ok else "a positive number of minutes"
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_minutes(text: str) -> float:
    """An argparse type: a finite number of minutes > 0."""
    return _minutes(text, zero_ok=False)


def minutes(text: str) -> float:
    """An argparse type: a finite number of minutes >= 0 (0: the stage is skipped)."""
    return _minutes(text, zero_ok=True)


@subcommand
def _add_campaign(sub) -> None:
    d = CampaignSettings()
    p = sub.add_parser(
        "campaign",
        help="pretrain for a wall-clock budget, then probe, track and fine-tune (a GPU call)",
        description="One process: fit a palette, time a few training steps, pretrain an AR "
        "model for the budget, write its weights, probe every layer on the full splits with "
        "every control and the random-weights twin, probe every snapshot, fine-tune for the "
        "time left. OUT ends with at most 8 files of at most 16 MiB.",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the results (new)")
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch folder for snapshots, caches, checkpoints (default: OUT.work beside OUT)",
    )
    p.add_argument(
        "--budget-min", type=positive_minutes, default=None,
        help=f"pretraining wall clock in minutes, the throughput pilot included (default "
        f"{d.budget_min:g})",
    )  # fmt: skip
    p.add_argument(
        "--finetune-min", type=minutes, default=None,
        help=f"fine-tuning wall clock in minutes, 0 for none (default {d.finetune_min:g})",
    )  # fmt: skip
    p.add_argument("--name", default=None, help=f"the model's folder in OUT (default {d.name})")
    p.add_argument(
        "--data-dir", type=Path, default=None,
        help="folder holding Fashion-MNIST's files (default: $IGPT_EVAL_DATA, ./data, "
        "/usr/share/datasets/fashion-mnist)",
    )  # fmt: skip
    p.add_argument(
        "--settings", type=Path, default=None, metavar="JSON",
        help="a JSON object of campaign settings to change (CampaignSettings' fields: shape, "
        "recipe, sample sizes; docs/campaign.md), applied before the flags",
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the plan; train nothing")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the same code path at a tiny size on the CPU, in seconds (a check, not a model)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT and the scratch folder")
    add_device_flag(p)  # resolved before the command runs, except for --dry-run
    p.set_defaults(func=_cmd_campaign)


def _cmd_campaign(args) -> int:
    from igpt_eval.studies.campaign import Campaign

    base = SMOKE_CAMPAIGN if args.smoke else CampaignSettings()
    if args.settings is not None:
        if not args.settings.is_file():
            raise IGPTError(f"no campaign settings file at {args.settings}")
        changes = read_json(args.settings)
        if not isinstance(changes, dict):
            raise IGPTError(f"{args.settings} must hold a JSON object of campaign settings")
        base = base.replace(**changes)
    # Flags given win over the settings file; --device also with --smoke (a GPU smoke run
    # checks the GPU path).
    asked = any(a == "--device" or a.startswith("--device=") for a in args.argv)
    flags = dict(name=args.name, budget_min=args.budget_min, finetune_min=args.finetune_min,
                 device=args.device if asked else None)  # fmt: skip
    given = {k: v for k, v in flags.items() if v is not None}
    settings = base.replace(**given)
    work = args.work or args.out.with_name(args.out.name + ".work")
    campaign = Campaign(
        settings, args.out, work, data_dir=args.data_dir, overwrite=args.overwrite,
        command=command_line(args), dry_run=args.dry_run,
    )  # fmt: skip
    if args.dry_run:
        for line in campaign.dry_run().lines():
            print(line)
    else:
        campaign.run()
    return 0
