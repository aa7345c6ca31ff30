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
        "models: a local HF folder (safetensors, or a pytorch_model.bin read as plain tensors "
        "only: a pickle that would run code is refused) or hf:OWNER/NAME[@REVISION] from the "
        "Hub (its cache when offline).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--from-hf",
        metavar="MODEL",
        help="HF ImageGPT folder or hf:OWNER/NAME[@REVISION] to import",
    )
    src.add_argument("--to-hf", type=Path, metavar="DIR", help="igpt-eval checkpoint to export")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args) -> int:
    from igpt_eval.model import from_hf, load_model, load_palette, save_model, to_hf
    from igpt_eval.model.sources import resolve_model

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise IGPTError(f"{args.out} is not empty; pass --overwrite to write into it")
    if args.from_hf is not None:
        source = resolve_model(args.from_hf)
        if source.is_checkpoint:
            raise IGPTError(f"{args.from_hf} is already an igpt-eval checkpoint")
        model = from_hf(source.path)
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
