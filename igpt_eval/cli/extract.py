"""``igpt-eval extract``: cache every layer's pooled features of a dataset split on disk."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from igpt_eval.cli.common import (
    MODEL_HELP,
    add_device_flag,
    add_token_cache_flag,
    compute_of,
    data_source_from_args,
    subcommand,
)
from igpt_eval.defaults import BERT_MASKS, EXTRACT_BATCH, GPU_EXTRACT_BATCH

_SPLITS = ("train", "val", "test", "trainval")


@subcommand
def _add_extract(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="cache per-layer pooled features of a dataset split",
        description="Run a checkpoint over a dataset split and write each layer's "
        "position-averaged activations (the paper's features) to an activation cache: one "
        ".npy per layer, resumable after an interruption (rerun the same command). Runs under "
        "torchrun, sharding rows over processes.",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument(
        "--dataset",
        default=None,
        help="dataset name (fashion-mnist, cifar10, npz:PATH, ...); default: the one in the "
        "model's run.json",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=[*_SPLITS, "all"],
        help="which split (default test); all: train, val and test, one sub-folder each",
    )
    p.add_argument("--layers", default="all", help="all (default), or e.g. 0,4,8 or 2-5")
    p.add_argument("--site", default="ln_1", help="site kind: ln_1 (default), resid_pre, ...")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"images per forward (default: {EXTRACT_BATCH} on the CPU, {GPU_EXTRACT_BATCH} on "
        "a GPU)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="cache folder to write (default: one named after the inputs under activations/ "
        "in the cache root, $IGPT_EVAL_CACHE or ~/.cache/igpt-eval, where probes reuse it)",
    )
    p.add_argument(
        "--cache-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="how features are stored (float16 halves the disk)",
    )
    p.add_argument(
        "--bert-masks",
        type=int,
        default=BERT_MASKS,
        help=f"BERT models: average the features over N masks (default {BERT_MASKS}; 0: unmasked)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the train/val split (default: the model's training run's, else 0)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the BERT masks (default: the model's training run's, else 0)",
    )
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast forward pass (default: on on a GPU, off on the CPU)",
    )
    p.add_argument(
        "--full-sequence-layer",
        type=int,
        default=None,
        metavar="L",
        help="also store layer L unpooled, [N, T, d] float16",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding the dataset")
    add_token_cache_flag(p)
    p.add_argument(
        "--rebuild-cache",
        action="store_true",
        help="rebuild a cache in --out that was made from other inputs (else it is refused)",
    )
    add_device_flag(p)
    p.set_defaults(func=_cmd_extract)


def _cmd_extract(args) -> int:
    from igpt_eval.cache.extraction import extract_split
    from igpt_eval.cache.settings import ExtractSettings
    from igpt_eval.cli.probe import parse_layers
    from igpt_eval.model.loading import open_model
    from igpt_eval.train import distributed as dist

    layers = parse_layers(args.layers)
    dist.init(args.device)
    device = args.device
    if device == "cuda" and dist.world_size() > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    main = dist.is_main()
    try:
        model, palette, ident = open_model(args.model, device=device)
        splits = ("train", "val", "test") if args.split == "all" else (args.split,)
        seed = args.seed if args.seed is not None else ident.run.seed
        # No --split-seed: extraction reads the split the model's run trained on.
        data = data_source_from_args(args, args.split_seed)
        settings = ExtractSettings(
            layers=layers, site=args.site, dtype=args.cache_dtype, bert_masks=args.bert_masks,
            seed=seed, full_sequence_layer=args.full_sequence_layer,
            compute=compute_of(args.bf16), batch_size=args.batch_size,
        )  # fmt: skip
        for split in splits:
            out = args.out
            if out is not None and args.split == "all":
                out = out / split
            cache = extract_split(
                model, palette, ident, data, split, out, settings=settings,
                overwrite=args.rebuild_cache,
            )  # fmt: skip
            if main:
                print(cache)
    finally:
        dist.shutdown()
    return 0
