"""``igpt-eval probe``: linear probes on every layer; the toolkit's main job."""

from __future__ import annotations

import argparse
from pathlib import Path

from igpt_eval.cli.common import (
    MODEL_HELP,
    add_device_flag,
    add_overwrite_flags,
    compute_of,
    config_from_args,
    data_source_from_args,
    refuse_overwrite,
    subcommand,
)
from igpt_eval.defaults import (
    BERT_MASKS,
    EXTRACT_BATCH,
    GPU_EXTRACT_BATCH,
    SAMPLE_TEST,
    SAMPLE_TRAIN,
    SAMPLE_VAL,
)
from igpt_eval.errors import IGPTError


def parse_layers(spec: str | None) -> list[int] | None:
    """``None``/``all`` → every layer; ``0,4,8`` or ``2-5`` → that list."""
    if spec is None or spec == "all":
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            lo, sep, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        raise IGPTError(f"--layers takes 'all', '0,4,8' or '2-5', not {spec!r}") from None
    return sorted(set(out))


def parse_size(spec: str) -> int | None:
    """``all`` → None (no cap); otherwise a positive number of rows."""
    if spec == "all":
        return None
    try:
        n = int(spec.replace("_", "").replace(",", ""))
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of images or 'all', not {spec!r}"
        )
    return n


def add_sample_flags(p, train: int | None, val: int | None, test: int | None) -> None:
    """``--train-size``, ``--val-size`` and ``--test-size``: the stratified sample of each
    split to probe (``probe``, ``compare`` and ``track`` share them)."""
    roles = {
        "train": "training images to fit the probes on",
        "val": "validation images that choose C and the best layer",
        "test": "test images every result is scored on",
    }
    for split, size in (("train", train), ("val", val), ("test", test)):
        default = "all" if size is None else f"{size:,}"
        p.add_argument(
            f"--{split}-size",
            type=parse_size,
            default=size,
            metavar="N|all",
            help=f"{roles[split]}: a stratified sample of N, or all (default {default})",
        )


def add_extraction_flags(p) -> None:
    """The feature flags ``probe`` and ``compare`` share (the defaults of ``probe_model``)."""
    add_sample_flags(p, SAMPLE_TRAIN, SAMPLE_VAL, SAMPLE_TEST)
    p.add_argument(
        "--bert-masks",
        type=int,
        default=BERT_MASKS,
        help=f"masks averaged (BERT models; default {BERT_MASKS}, 0: unmasked)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"extraction batch size (default: {EXTRACT_BATCH} on the CPU, "
        f"{GPU_EXTRACT_BATCH} on a GPU)",
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast for extraction (default: on on a GPU; off on the CPU, where it "
        "pays only with bf16 units, and it changes the features slightly)",
    )
    p.add_argument(
        "--cache-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="how cached features are stored (float16 halves the disk: iGPT-L's 49 sites x "
        "1536 floats x 60,000 images are 18 GB in float32)",
    )
    p.add_argument(
        "--concat-layers",
        type=int,
        default=None,
        metavar="K",
        help="also probe the K layers (odd) centred on the one chosen on validation, "
        "concatenated (the paper's multi-layer probe; L-BFGS only); default: off",
    )


def add_probe_seed_flag(p) -> None:
    """``--seed`` of ``probe`` and ``compare`` (the run's randomness; the split is the
    model's own)."""
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the probes, the BERT masks and the bootstrap intervals (the train/val "
        "split is the one the model was trained on: its run's --split-seed)",
    )


def add_native_pixels_flag(p) -> None:
    """``--native-pixels``/``--no-native-pixels`` of ``probe`` and ``compare``, one default
    (:class:`ProbeSettings`')."""
    from igpt_eval.studies.settings import ProbeSettings

    default = ProbeSettings.native_pixels
    p.add_argument(
        "--native-pixels",
        action=argparse.BooleanOptionalAction,
        default=default,
        help="also probe the dataset's raw pixels at native resolution (Fashion-MNIST: 28x28 "
        f"grey), same splits and samples (default: {'on' if default else 'off'})",
    )


@subcommand
def _add_probe(sub) -> None:
    from igpt_eval.defaults import DEFAULT_MODEL

    p = sub.add_parser(
        "probe",
        help="linear probes on every layer (the depth curve)",
        description="Extract (or reuse) features of a model on train/val/test, fit a linear "
        "probe per layer (C chosen on val, refit on train+val, test reported once with a "
        "bootstrap 95% CI) and the same probe on the raw pixels, print the table and the "
        "paired differences (best layer on val minus the last layer, and minus the pixels: "
        "paired bootstrap 95% CI, McNemar's exact test), write results, per-example test "
        "predictions and depth_curve.png. With no arguments: the shipped Fashion-MNIST AR "
        "model.",
    )
    p.add_argument("--model", default=str(DEFAULT_MODEL), help=MODEL_HELP)
    p.add_argument("--dataset", default=None, help="dataset (default: the model's run.json)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding the dataset files")
    p.add_argument("--layers", default=None, help="all (default), '0,4,8' or '2-5'")
    p.add_argument("--all-layers", action="store_true", help="probe every layer (default)")
    p.add_argument("--site", default="ln_1", help="activation site kind (default ln_1)")
    p.add_argument(
        "--method",
        choices=["lbfgs", "sgd"],
        default="lbfgs",
        help="lbfgs: full batch, C chosen on validation; sgd: streamed from the cache, for sets "
        "too large to hold (learning rate chosen on validation)",
    )
    p.add_argument(
        "--backend",
        choices=["torch", "sklearn", "cuml"],
        default="torch",
        help="L-BFGS solver: torch (batched, CPU or GPU), sklearn (the reference), cuml (GPU)",
    )
    add_device_flag(p)
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="standardise features with training statistics (default: on)",
    )
    add_extraction_flags(p)
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="activation cache folder (default: under activations/ in the user cache folder)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: runs/probe/<model name>-<weights hash>, one per model)",
    )
    p.add_argument(
        "--no-pixels",
        action="store_true",
        help="skip the raw-pixel baseline (and the best − pixels difference)",
    )
    add_native_pixels_flag(p)
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="probe the model's random-weights control instead: the same architecture at "
        "the initialisation its training run started from (its own caches: give it another "
        "--cache than the model's; default out: runs/probe/<model>-random-weights)",
    )
    add_probe_seed_flag(p)
    add_overwrite_flags(p, caches=True)
    p.set_defaults(func=_cmd_probe)


def probe_settings_from_args(args, **overrides):
    """The :class:`~igpt_eval.studies.settings.ProbeSettings` of ``probe``, ``compare`` and
    ``track``: every field from the flag of its name (:func:`config_from_args`), the two
    flags spelt otherwise translated (``--bf16``, ``--no-pixels``, where the command has
    it); ``overrides`` win."""
    from igpt_eval.studies.settings import ProbeSettings

    spelt = dict(compute=compute_of(args.bf16), pixels=not getattr(args, "no_pixels", False))
    return config_from_args(ProbeSettings, args, **{**spelt, **overrides})


def _cmd_probe(args) -> int:
    from igpt_eval.model.sources import default_folder
    from igpt_eval.names import CONCAT
    from igpt_eval.reporting.curve import probe_figure
    from igpt_eval.reporting.figures import save_figure
    from igpt_eval.reporting.tables import concat_summaries, format_summary
    from igpt_eval.results import summary
    from igpt_eval.studies.probe import probe_model

    if args.all_layers and args.layers not in (None, "all"):
        raise IGPTError("--all-layers and --layers disagree; give one of them")
    suffix = "-random-weights" if args.random_weights else ""
    out = args.out or Path("runs/probe") / (default_folder(args.model) + suffix)
    refuse_overwrite(out / "results.parquet", args.overwrite)
    settings = probe_settings_from_args(args, layers=parse_layers(args.layers))
    df = probe_model(
        args.model,
        data_source_from_args(args),
        settings,
        cache_dir=args.cache,
        out=out,
        overwrite=args.rebuild_cache,
    ).results
    s = summary(df)
    model = df.model.iloc[0]  # "<label> (random weights)" for the control
    cat = concat_summaries(df).get(model)
    name = f"{model} ({df.objective.iloc[0]}) on {df.dataset.iloc[0]}"
    files = save_figure(probe_figure(df), out / "depth_curve")
    print(f"linear probes ({args.method}, {args.backend}) of {name}, site {args.site}")
    own = df[df.probe == args.method]
    val, test = own[own.split == "val"].iloc[0], own[own.split == "test"].iloc[0]
    sampled = any(n is not None for n in (args.train_size, args.val_size, args.test_size))
    sample = " (stratified samples; --{train,val,test}-size all for every image)" if sampled else ""
    print(
        f"chosen on {int(val.n_eval):,} val images after training on {int(val.n_train):,}; "
        f"refit on train+val, tested once on {int(test.n_eval):,}{sample}"
    )
    print(format_summary(s, differences=df[df.probe.isin([args.method, CONCAT])], concat=cat))
    print(
        f"results: {out / 'results.parquet'} (+ .csv, predictions.npz: per-example test "
        f"predictions); figure: {files[0]}"
    )
    return 0
