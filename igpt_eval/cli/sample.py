"""``igpt-eval sample`` and ``igpt-eval model-card``: look at and document a trained model."""

from __future__ import annotations

from pathlib import Path

from igpt_eval.cli.common import MODEL_HELP, add_token_cache_flag, refuse_overwrite, subcommand
from igpt_eval.errors import IGPTError


def _read(model):
    """(source, palette, run.json) of any model source, its weights left unread (``{}``
    for a model not trained here); the palette is required."""
    from igpt_eval.model.record import RunRecord
    from igpt_eval.model.sources import resolve_model, source_palette

    source = resolve_model(model)
    palette = source_palette(source)
    if palette is None:
        raise IGPTError(f"{model} has no palette: its tokens cannot be turned into images")
    return source, palette, RunRecord.read(source.path) if source.is_checkpoint else RunRecord()


def _load(model):
    """(model, palette, run.json) of any model source (:func:`_read`, the weights loaded)."""
    from igpt_eval.model.sources import load_source

    source, palette, run = _read(model)
    net, _, _ = load_source(source, "cpu")
    return net, palette, run


def _dataset_name(args, run) -> str:
    name = args.dataset or run.dataset
    if not name:
        raise IGPTError(f"{args.model} records no dataset (no run.json); pass --dataset")
    return name


@subcommand
def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="draw samples or completions from an AR model",
        description="Draw unconditional samples from an autoregressive model as an image grid, "
        "or with --complete, complete the bottom halves of dataset images from their top halves.",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--n", type=int, default=16, help="samples (or images to complete)")
    p.add_argument("--complete", action="store_true", help="complete dataset images instead")
    p.add_argument("--samples", type=int, default=3, help="completions per image (--complete)")
    p.add_argument("--dataset", default=None, help="dataset to complete (default: the run's)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding the dataset files")
    p.add_argument("--split", default="test", help="split to complete (default: test)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the K likeliest colours")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_cmd_sample)


def _cmd_sample(args) -> int:
    from igpt_eval.data import load_dataset
    from igpt_eval.reporting.model_figures import completion_grid, sample_grid, save_png
    from igpt_eval.studies.samples import Sampling, complete_images, sample_images

    refuse_overwrite(args.out, args.overwrite)
    if args.n < 1:
        raise IGPTError(f"--n must be >= 1, got {args.n}")
    model, palette, run = _load(args.model)
    if model.config.objective != "ar":
        raise IGPTError("sampling needs an autoregressive model; this one is BERT")
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    if args.complete:
        ds = load_dataset(
            _dataset_name(args, run),
            split=args.split,
            n_px=model.config.n_px,
            data_dir=args.data_dir,
            seed=run.data_seed,  # --split val: the run's own validation images
        )
        tokens = palette.encode(ds.images[: args.n])
        drawn = completion_grid(
            complete_images(model, palette, tokens, args.n, args.samples, sampling)
        )
        what = f"completions of {min(args.n, len(ds))} {ds.name}/{ds.split} images"
    else:
        drawn = sample_grid(sample_images(model, palette, args.n, sampling), sampling)
        what = f"{args.n} samples"
    save_png(drawn, args.out)
    print(f"{what} -> {args.out}")
    return 0


@subcommand
def _add_model_card(sub) -> None:
    p = sub.add_parser(
        "model-card",
        help="measure a trained model and write its MODEL_CARD.md",
        description="Measure a checkpoint on the test split of its dataset next to unigram and "
        "previous-pixel baselines, draw its training curve and completions, and write "
        "MODEL_CARD.md into the checkpoint folder. On an igpt-eval finetune folder, write "
        "the classifier's card from the run's own files instead (test accuracy with its CI, "
        "recipe, learning curve, command).",
    )
    p.add_argument("--model", type=Path, required=True, help="checkpoint folder of a run")
    p.add_argument("--dataset", default=None, help="dataset (default: the run's, from run.json)")
    p.add_argument("--data-dir", type=Path, default=None, help="folder holding the dataset files")
    p.add_argument("--reports", type=Path, default=None, help="also copy the figures here")
    p.add_argument("--name", default=None, help="name in the card and figure files (the folder's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the completions")
    p.add_argument("--batch-size", type=int, default=256, help="test images per forward pass")
    add_token_cache_flag(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing card and figures")
    p.add_argument(
        "--probe-results",
        type=Path,
        action="append",
        default=None,
        help="only (re)write the card's linear-probe section from this results file or folder "
        "(igpt-eval probe/compare output); repeat it for one subsection per run (e.g. the "
        "default sample and --train-size all); nothing is re-measured",
    )
    p.set_defaults(func=_cmd_model_card)


def _cmd_model_card(args) -> int:
    from igpt_eval.data import load_dataset, load_tokens
    from igpt_eval.model.sources import source_config
    from igpt_eval.reporting.classifier_card import is_finetune_folder, write_classifier_card
    from igpt_eval.reporting.modelcard import write_model_card
    from igpt_eval.reporting.probe_card import CARD, set_probe_section
    from igpt_eval.studies.modelcard import measure_checkpoint

    if is_finetune_folder(args.model):  # a fine-tuned classifier: its own kind of card
        refuse_overwrite(args.model / CARD, args.overwrite)
        card = write_classifier_card(args.model, args.name)
        print(f"classifier card written: {card}")
        return 0
    if args.probe_results is not None:
        from igpt_eval.results import load_results

        name = args.name or args.model.resolve().name
        sources = [str(p) for p in args.probe_results]
        results = [load_results(p) for p in args.probe_results]
        card = set_probe_section(args.model, results, name, sources)
        print(f"linear-probe section of {card} written from {', '.join(sources)}")
        return 0

    # The card's numbers are measured below; here only what the data must match is read.
    source, palette, run = _read(args.model)
    n_px = source_config(source).n_px
    name = args.name or args.model.resolve().name
    refuse_overwrite(args.model / CARD, args.overwrite)
    if args.reports is not None:
        for fig in ("loss_curve", "completions"):
            refuse_overwrite(args.reports / f"{name}-{fig}.png", args.overwrite)
    if run.palette_hash not in (None, palette.hash):
        raise IGPTError(f"{args.model}/palette.npy is not the palette recorded in run.json")
    dataset = _dataset_name(args, run)
    # The card must see the train split the model saw.
    seed = run.data_seed
    splits = {}
    for split in ("train", "test"):
        ds = load_dataset(dataset, split=split, n_px=n_px, data_dir=args.data_dir, seed=seed)
        if split == "train" and run.train_fingerprint not in (None, ds.fingerprint):
            raise IGPTError(
                f"the train split of {dataset} is not the one {args.model} was trained on "
                "(its fingerprint differs from run.json); pass the run's --dataset and --data-dir"
            )
        splits[split] = load_tokens(ds, palette, args.token_cache).tokens
    measured = measure_checkpoint(
        args.model, train_tokens=splits["train"], test_tokens=splits["test"], seed=args.seed,
        batch_size=args.batch_size,
    )  # fmt: skip
    card = write_model_card(args.model, measured, reports_dir=args.reports, name=name)
    print(f"model card -> {card}")
    return 0
