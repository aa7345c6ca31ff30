"""Subcommands of ``igpt-eval``, one module per pipeline stage.

Each subcommand is a pair of functions: ``_add_<name>(sub)`` declares its flags and is
registered with :func:`subcommand`; ``_cmd_<name>(args)`` runs it by calling the library (no
logic of its own). Library imports happen inside ``_cmd_*`` so the CLI starts fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Callable
from pathlib import Path

from igpt_eval.errors import IGPTError

#: What every ``--model`` flag takes (:func:`igpt_eval.model.sources.resolve_model`).
MODEL_HELP = (
    "an igpt-eval checkpoint folder, a Hugging Face ImageGPT folder, or hf:OWNER/NAME[@REVISION] "
    "(a Hub model, read from the Hugging Face cache when offline)"
)

# name -> function adding the subcommand's parser; filled by @subcommand in import order.
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def subcommand(add: Callable[[argparse._SubParsersAction], None]):
    """Register ``_add_<name>`` as the parser builder of subcommand ``<name>``."""
    SUBCOMMANDS[add.__name__.removeprefix("_add_")] = add
    return add


def config_from_args(cls, args: argparse.Namespace, **overrides):
    """The config dataclass ``cls`` from the parsed flags named as its fields; ``overrides``
    win, and fields with no flag keep their defaults."""
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    return cls(**{**given, **overrides})


def parse_steps(text: str) -> tuple[int, ...]:
    """``"0,100,300"`` → ``(0, 100, 300)``: training steps (integers >= 0), sorted, once each
    (``--snapshot-steps``, ``track --steps``)."""
    try:
        steps = {int(t) for t in text.split(",") if t.strip()}
    except ValueError:
        steps = {-1}
    if not steps or min(steps) < 0:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated steps (integers >= 0), got {text!r}"
        )
    return tuple(sorted(steps))


def add_overwrite_flags(p, *, caches: bool = False) -> None:
    """``--overwrite``: replace this command's existing output (without it, an output that
    exists is refused); with ``caches``, also ``--rebuild-cache``: rebuild an activation
    cache made from other inputs (without it, such a cache is refused, never reused)."""
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    if caches:
        p.add_argument(
            "--rebuild-cache",
            action="store_true",
            help="rebuild activation caches in --cache that were made from other inputs",
        )


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (threads, snapshots, ...)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def refuse_overwrite(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless ``--overwrite`` was given."""
    if path.exists() and not overwrite:
        raise IGPTError(f"{path} already exists; pass --overwrite to replace it")


def add_dataset_flags(
    p: argparse.ArgumentParser,
    *,
    overwrite: bool = True,
    dataset: str | None = None,
    seed_help: str | None = None,
) -> None:
    """The flags every data-reading subcommand shares (``--dataset`` required unless a
    default is given): ``--split-seed`` seeds the train/val split and nothing else, and a
    command with randomness of its own adds ``--seed`` for it (``seed_help`` says what it
    seeds), so that two runs with other seeds still read the same split."""
    p.add_argument(
        "--dataset",
        required=dataset is None,
        default=dataset,
        help="dataset name (fashion-mnist, cifar10, ..., npz:PATH, imagefolder:PATH)"
        + (f"; default {dataset}" if dataset else ""),
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding the dataset files (default: $IGPT_EVAL_DATA, ./data)",
    )
    p.add_argument("--n-px", type=int, default=None, help="resize images to N x N pixels")
    p.add_argument(
        "--split-seed", type=int, default=0, help="seed of the train/val split (nothing else)"
    )
    if seed_help is not None:
        p.add_argument("--seed", type=int, default=0, help=seed_help)
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def add_device_flag(p) -> None:
    """``--device``: resolved once in :func:`igpt_eval.cli.main.main`, before any work, by
    :func:`igpt_eval.model.devices.resolve_device` (a missing GPU is one line there)."""
    p.add_argument(
        "--device",
        default="auto",
        help="auto (default: the first CUDA GPU when there is one, else the CPU), cpu, cuda "
        "or cuda:N",
    )


def compute_of(bf16: bool | None) -> str:
    """The extraction precision ``--bf16``/``--no-bf16`` ask for; neither given: ``auto``
    (bf16 autocast on a GPU, float32 on the CPU; see ``model.devices.resolve_compute``)."""
    return "auto" if bf16 is None else ("bfloat16" if bf16 else "float32")


def add_token_cache_flag(p) -> None:
    """``--token-cache``: where token caches live (default: the managed cache root,
    :func:`igpt_eval.defaults.cache_root`)."""
    p.add_argument(
        "--token-cache",
        type=Path,
        default=None,
        help="where token caches live (default: tokens/ in $IGPT_EVAL_CACHE, else in the "
        "user cache folder, ~/.cache/igpt-eval on Linux)",
    )


def data_source_from_args(args: argparse.Namespace, split_seed: int | None = None):
    """The :class:`~igpt_eval.data.source.DataSource` of ``--dataset``, ``--data-dir`` and
    ``--token-cache`` (those the command has; ``split_seed`` None: the model's run's)."""
    from igpt_eval.data.source import DataSource

    return DataSource(
        getattr(args, "dataset", None),
        getattr(args, "data_dir", None),
        split_seed,
        getattr(args, "token_cache", None),
    )


def command_line(args: argparse.Namespace) -> str | None:
    """The command as typed (``igpt-eval pretrain ...``), for a run to record."""
    argv = getattr(args, "argv", None)
    return "igpt-eval " + shlex.join(argv) if argv else None
