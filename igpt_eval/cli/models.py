"""``igpt-eval convert`` and ``igpt-eval info``: checkpoints and what files hold."""

from __future__ import annotations

from pathlib import Path

from igpt_eval.cli.common import subcommand
from igpt_eval.errors import IGPTError


@subcommand
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
    from igpt_eval.model import from_hf, load_model, load_palette, save_model, to_hf

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise IGPTError(f"{args.out} is not empty; pass --overwrite to write into it")
    if args.from_hf is not None:
        model = from_hf(args.from_hf)
        save_model(model, args.out, palette=getattr(model, "palette", None))
        what = "igpt-eval checkpoint"
    else:
        model = load_model(args.to_hf)
        to_hf(model, args.out, palette=load_palette(args.to_hf))
        what = "Hugging Face ImageGPT folder"
    c = model.config
    print(
        f"wrote {what} {args.out}: {model.n_params():,} parameters, {c.n_layer} layers, "
        f"d={c.n_embd}, {c.n_px}x{c.n_px} px, {c.vocab_size} colours"
    )
    return 0


@subcommand
def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="describe a checkpoint, palette or cache",
        description="Print what a file or folder made by igpt-eval holds, and check it.",
    )
    p.add_argument("path", type=Path, help="checkpoint folder, palette .npy, or cache folder")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args) -> int:
    from igpt_eval.cli.info import describe

    print(describe(args.path))
    return 0
