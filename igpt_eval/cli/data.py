"""``igpt-eval palette`` and ``igpt-eval tokenize``: the palette and data stages."""

from __future__ import annotations

from pathlib import Path

from igpt_eval.cli.common import add_dataset_flags, add_device_flag, refuse_overwrite, subcommand


@subcommand
def _add_palette(sub) -> None:
    p = sub.add_parser(
        "palette",
        help="fit a k-means colour palette on a dataset",
        description="Fit a k-means colour palette on a sample of a dataset's "
        "training pixels and save it as a float32 [k, c] .npy.",
    )
    add_dataset_flags(p, seed_help="seed of the pixel sample and the k-means initialisation")
    p.add_argument("--k", type=int, required=True, help="number of colours (512 in the paper)")
    p.add_argument("--out", type=Path, required=True, help="palette file to write (.npy)")
    p.add_argument("--split", default="train", help="split to fit on (default: train)")
    p.add_argument("--sample", type=int, default=200_000, help="pixels sampled for k-means")
    add_device_flag(p)
    p.set_defaults(func=_cmd_palette)


def _cmd_palette(args) -> int:
    from igpt_eval.data import load_dataset
    from igpt_eval.data.palette import Palette

    refuse_overwrite(args.out, args.overwrite)
    ds = load_dataset(
        args.dataset,
        split=args.split,
        n_px=args.n_px,
        data_dir=args.data_dir,
        seed=args.split_seed,
    )
    pal = Palette.fit(ds.images, args.k, seed=args.seed, sample=args.sample, device=args.device)
    pal.save(args.out)
    print(
        f"palette k={pal.k} channels={pal.channels} hash={pal.hash} "
        f"fitted on {ds.name}/{ds.split} ({len(ds)} images) -> {args.out}"
    )
    return 0


@subcommand
def _add_tokenize(sub) -> None:
    p = sub.add_parser(
        "tokenize",
        help="encode a dataset split into palette tokens",
        description="Encode one split of a dataset with a palette into a token "
        "cache folder (tokens.npy, labels.npy, manifest.json).",
    )
    add_dataset_flags(p)
    p.add_argument("--palette", type=Path, required=True, help="palette .npy file")
    p.add_argument("--split", default="train", help="train, val, trainval or test")
    p.add_argument("--out", type=Path, required=True, help="cache folder to write")
    p.add_argument("--batch-size", type=int, default=4096, help="images encoded per batch")
    p.set_defaults(func=_cmd_tokenize)


def _cmd_tokenize(args) -> int:
    from igpt_eval.data import load_dataset, read_manifest, tokenize
    from igpt_eval.data.palette import Palette

    pal = Palette.load(args.palette)
    ds = load_dataset(
        args.dataset,
        split=args.split,
        n_px=args.n_px,
        data_dir=args.data_dir,
        seed=args.split_seed,
    )
    before = read_manifest(args.out)
    cache = tokenize(ds, pal, args.out, batch_size=args.batch_size, overwrite=args.overwrite)
    state = "up to date" if before == cache.manifest else "written"
    print(
        f"tokens {cache.tokens.shape[0]}x{cache.tokens.shape[1]} ({ds.name}/{ds.split}, "
        f"{cache.n_px}px, palette {pal.hash}) {state}: {args.out}"
    )
    return 0
