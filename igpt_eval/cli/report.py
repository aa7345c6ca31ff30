"""``igpt-eval report``: regenerate ``reports/`` (figures and README) from results files."""

from __future__ import annotations

from pathlib import Path

from igpt_eval.cli.common import add_overwrite_flags, refuse_overwrite, subcommand
from igpt_eval.cli.compare import DEFAULT_OUT

LOWDATA_OUT = Path("runs/lowdata")  # where the README's lowdata command writes


@subcommand
def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="draw every figure and write README.md from results files",
        description="Read the results of `igpt-eval compare` (tidy results, CKA table, "
        "models.json) and the models' training logs, and write depth curves, kNN and CKA "
        "figures, training curves, the palette swatch and completion samples (PNG and SVG) "
        "and a README.md summarising the measured numbers.",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder written by igpt-eval compare (default {DEFAULT_OUT})",
    )
    p.add_argument("--out", type=Path, default=Path("reports"), help="default reports/")
    p.add_argument(
        "--lowdata",
        type=Path,
        default=LOWDATA_OUT,
        help=f"folder written by igpt-eval lowdata (default {LOWDATA_OUT}; skipped if empty)",
    )
    p.add_argument(
        "--track",
        type=Path,
        default=None,
        help="folder written by igpt-eval track: adds its figures and a training-dynamics section",
    )
    p.add_argument(
        "--finetune",
        type=Path,
        action="append",
        default=None,
        help="a folder written by igpt-eval finetune (repeatable): adds a fine-tuning section, "
        "paired against the comparison's probes on the same test images",
    )
    p.add_argument(
        "--full-probe",
        type=Path,
        action="append",
        default=None,
        help="a folder written by igpt-eval probe --train-size all --test-size all "
        "(repeatable): the fine-tuning section adds that model's best full-train probe and "
        "the fine-tuned model's paired difference to it",
    )
    p.add_argument(
        "--campaign",
        type=Path,
        default=None,
        help="a folder written by igpt-eval campaign: write its own report into --out "
        "(depth curve with every control, contrasts, snapshots, plan) instead",
    )
    add_overwrite_flags(p)
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from igpt_eval.reporting.report import build_report

    refuse_overwrite(args.out / "README.md", args.overwrite)
    if args.campaign is not None:
        from igpt_eval.reporting.campaign import campaign_report

        command = f"igpt-eval report --campaign {args.campaign} --out {args.out}"
        files = campaign_report(args.campaign, args.out, command=command)
        print(f"{len(files)} files written to {args.out}; summary: {files[0]}")
        return 0
    command = f"igpt-eval report --results {args.results} --out {args.out}"
    if args.lowdata != LOWDATA_OUT:
        command += f" --lowdata {args.lowdata}"
    if args.track is not None:
        command += f" --track {args.track}"
    for d in args.finetune or []:
        command += f" --finetune {d}"
    for d in args.full_probe or []:
        command += f" --full-probe {d}"
    files = build_report(
        args.results,
        args.out,
        command=command,
        lowdata_dir=args.lowdata,
        track_dir=args.track,
        finetune_dirs=args.finetune,
        full_probe_dirs=args.full_probe,
    )
    print(f"{len(files)} files written to {args.out}; summary: {args.out / 'README.md'}")
    return 0
