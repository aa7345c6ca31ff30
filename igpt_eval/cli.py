"""The ``igpt-eval`` command.

Each subcommand is a pair of functions: ``_add_<name>(sub)`` declares its flags and
``_cmd_<name>(args)`` runs it by calling the library (the CLI holds no logic of its own).
Errors a user can cause are :class:`~igpt_eval.errors.IGPTError`: printed as one line with a
non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from igpt_eval.errors import IGPTError

PROG = "igpt-eval"

# name -> function that adds the subcommand's parser; filled by @_subcommand, in file order.
_SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def _subcommand(add: Callable[[argparse._SubParsersAction], None]):
    """Register ``_add_<name>`` as the parser builder of subcommand ``<name>``."""
    _SUBCOMMANDS[add.__name__.removeprefix("_add_")] = add
    return add


def _fail(msg: str, code: int = 2) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless ``--overwrite`` was given."""
    if path.exists() and not overwrite:
        raise IGPTError(f"{path} already exists; pass --overwrite to replace it")


# --------------------------------------------------------------------------- palette / tokenize
# (owned by the palette + data work; see igpt_eval/palette.py and igpt_eval/data/)


def _add_dataset_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        required=True,
        help="dataset name (fashion-mnist, cifar10, ..., npz:PATH, imagefolder:PATH)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding the dataset files (default: $IGPT_EVAL_DATA, ./data)",
    )
    p.add_argument("--n-px", type=int, default=None, help="resize images to N x N pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


@_subcommand
def _add_palette(sub) -> None:
    p = sub.add_parser(
        "palette",
        help="fit a k-means colour palette on a dataset",
        description="Fit a k-means colour palette on a sample of a dataset's "
        "training pixels and save it as a float32 [k, c] .npy.",
    )
    _add_dataset_flags(p)
    p.add_argument("--k", type=int, required=True, help="number of colours (512 in the paper)")
    p.add_argument("--out", type=Path, required=True, help="palette file to write (.npy)")
    p.add_argument("--split", default="train", help="split to fit on (default: train)")
    p.add_argument("--sample", type=int, default=200_000, help="pixels sampled for k-means")
    p.add_argument("--device", default="cpu", help="cpu (scikit-learn) or e.g. cuda (torch)")
    p.set_defaults(func=_cmd_palette)


def _cmd_palette(args) -> int:
    from igpt_eval.data import load_dataset
    from igpt_eval.palette import Palette

    _refuse_overwrite(args.out, args.overwrite)
    ds = load_dataset(
        args.dataset, split=args.split, n_px=args.n_px, data_dir=args.data_dir, seed=args.seed
    )
    pal = Palette.fit(
        ds.images, args.k, seed=args.seed, sample=args.sample, device=args.device, progress=True
    )
    pal.save(args.out)
    print(
        f"palette k={pal.k} channels={pal.channels} hash={pal.hash} "
        f"fitted on {ds.name}/{ds.split} ({len(ds)} images) -> {args.out}"
    )
    return 0


@_subcommand
def _add_tokenize(sub) -> None:
    p = sub.add_parser(
        "tokenize",
        help="encode a dataset split into palette tokens",
        description="Encode one split of a dataset with a palette into a token "
        "cache folder (tokens.npy, labels.npy, manifest.json).",
    )
    _add_dataset_flags(p)
    p.add_argument("--palette", type=Path, required=True, help="palette .npy file")
    p.add_argument("--split", default="train", help="train, val, trainval or test")
    p.add_argument("--out", type=Path, required=True, help="cache folder to write")
    p.add_argument("--batch-size", type=int, default=4096, help="images encoded per batch")
    p.set_defaults(func=_cmd_tokenize)


def _cmd_tokenize(args) -> int:
    from igpt_eval.data import load_dataset, read_manifest, tokenize
    from igpt_eval.palette import Palette

    pal = Palette.load(args.palette)
    ds = load_dataset(
        args.dataset, split=args.split, n_px=args.n_px, data_dir=args.data_dir, seed=args.seed
    )
    before = read_manifest(args.out)
    cache = tokenize(ds, pal, args.out, batch_size=args.batch_size, overwrite=args.overwrite)
    state = "up to date" if before == cache.manifest else "written"
    print(
        f"tokens {cache.tokens.shape[0]}x{cache.tokens.shape[1]} ({ds.name}/{ds.split}, "
        f"{cache.n_px}px, palette {pal.hash}) {state}: {args.out}"
    )
    return 0


# --------------------------------------------------------------------------- model / convert / info


@_subcommand
def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="import or export Hugging Face ImageGPT checkpoints",
        description="Convert between igpt-eval checkpoint folders and Hugging Face ImageGPT "
        "folders (config.json + safetensors; pickled weights are refused).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", type=Path, metavar="DIR", help="HF ImageGPT folder to import")
    src.add_argument("--to-hf", type=Path, metavar="DIR", help="igpt-eval checkpoint to export")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    from igpt_eval.checkpoint import load_palette
    from igpt_eval.hf import from_hf
    from igpt_eval.model import IGPT

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise IGPTError(f"{args.out} is not empty; pass --overwrite to write into it")
    if args.from_hf is not None:
        model = from_hf(args.from_hf)
        model.save(args.out, palette=getattr(model, "palette", None))
        what = "igpt-eval checkpoint"
    else:
        model = IGPT.load(args.to_hf)
        model.to_hf(args.out, palette=load_palette(args.to_hf))
        what = "Hugging Face ImageGPT folder"
    c = model.config
    print(
        f"wrote {what} {args.out}: {model.n_params():,} parameters, {c.n_layer} layers, "
        f"d={c.n_embd}, {c.n_px}x{c.n_px} px, {c.vocab_size} colours"
    )
    return 0


@_subcommand
def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="describe a checkpoint, palette or cache",
        description="Print what a file or folder made by igpt-eval holds, and check it.",
    )
    p.add_argument("path", type=Path, help="checkpoint folder, palette .npy, or cache folder")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args) -> int:
    from igpt_eval.info import describe

    print(describe(args.path))
    return 0


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (one subparser per registered subcommand)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Image GPT: palettes, models, activation caches and layer-wise probes.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except (IGPTError, OSError) as e:
        if args.debug:
            raise
        return _fail(str(e) if isinstance(e, IGPTError) else f"{type(e).__name__}: {e}")
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
