"""``igpt-eval compare``: the AR-vs-BERT study (probes, kNN, CKA, pixel baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from igpt_eval.cli.common import (
    MODEL_HELP,
    add_device_flag,
    add_overwrite_flags,
    data_source_from_args,
    refuse_overwrite,
    subcommand,
)
from igpt_eval.cli.probe import add_extraction_flags, add_native_pixels_flag, add_probe_seed_flag
from igpt_eval.errors import IGPTError

DEFAULT_OUT = Path("runs/compare")


@subcommand
def _add_compare(sub) -> None:

    p = sub.add_parser(
        "compare",
        help="compare models layer by layer (linear probes, kNN, CKA, pixel baseline)",
        description="Probe every layer of each model with the same protocol and splits, run "
        "weighted kNN and linear CKA on the same activation caches, probe the controls (the "
        "raw palette-quantised pixels, the raw pixels at native resolution, each model's "
        "random-weights twin), print the comparison table and write the "
        "tidy results, CKA table, table and depth-curve figure. With no arguments: the "
        "shipped fmnist-ar and fmnist-bert models.",
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="MODEL",
        help="a model to compare (repeat for each; default: models/fmnist-ar and "
        "models/fmnist-bert): " + MODEL_HELP,
    )
    # The earlier spelling (all models after one flag), so that recorded commands still run.
    p.add_argument("--models", nargs="+", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dataset", default=None, help="dataset (default: the models' run.json)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding the dataset files")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="activation caches root (default: activations/compare/ in the user cache folder)",
    )
    p.add_argument("--site", default="ln_1", help="activation site kind (default ln_1)")
    add_device_flag(p)
    add_extraction_flags(p)
    p.add_argument("--knn-k", type=int, default=20, help="kNN neighbours (default 20)")
    p.add_argument("--knn-temperature", type=float, default=0.07, help="kNN temperature")
    p.add_argument(
        "--cka-rows", type=int, default=10_000, help="test rows used for CKA (default 10000)"
    )
    p.add_argument("--no-pixels", action="store_true", help="skip the raw-pixel baseline")
    add_native_pixels_flag(p)
    p.add_argument(
        "--random-weights",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also probe each model's random-weights control (the same architecture "
        "untrained, probed alike, cached like the models)",
    )
    p.add_argument(
        "--no-random-control", dest="random_weights", action="store_false", help=argparse.SUPPRESS
    )
    add_probe_seed_flag(p)
    add_overwrite_flags(p)
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    from igpt_eval.cli.probe import probe_settings_from_args
    from igpt_eval.reporting.comparison import write_comparison
    from igpt_eval.reporting.tables import comparison_table, table_markdown
    from igpt_eval.studies.compare import compare_models

    if args.cka_rows < 2:
        raise IGPTError(f"--cka-rows must be >= 2, got {args.cka_rows}")
    refuse_overwrite(args.out / "results.parquet", args.overwrite)
    # --random-weights here adds each model's twin beside it (random_control), so the
    # settings' own random_weights (probe the twin instead of the model) stays off.
    settings = probe_settings_from_args(args, random_weights=False)
    from igpt_eval.defaults import DEFAULT_MODELS

    models = (args.model or []) + (args.models or []) or [str(m) for m in DEFAULT_MODELS]
    c = compare_models(
        models,
        data_source_from_args(args),
        settings,
        cache_dir=args.cache,
        knn_k=args.knn_k,
        knn_temperature=args.knn_temperature,
        cka_max_rows=args.cka_rows,
        random_control=args.random_weights,
    )
    write_comparison(c, args.out)
    ds = c.results.dataset.iloc[0]
    print(f"comparison on {ds} (test accuracy; best layer chosen on validation):")
    print(table_markdown(comparison_table(c.results)))
    print(f"results: {args.out / 'results.parquet'} (+ .csv, cka/, tables/, depth_curve.png)")
    print(f"next: igpt-eval report --results {args.out} --out reports/")
    return 0
