"""``igpt-eval info``: what a file or folder made by igpt-eval holds, checked as it is read."""

from __future__ import annotations

import json
from pathlib import Path

from igpt_eval.errors import IGPTError


def describe(path: str | Path) -> str:
    """A short human-readable description of a checkpoint, HF folder, palette or cache.

    Reading goes through the same loaders the pipeline uses, so a broken file is reported
    here with the same one-line error it would cause later.
    """
    path = Path(path)
    if not path.exists():
        raise IGPTError(f"{path} does not exist")
    if path.is_file() and path.suffix == ".npy":
        return _palette(path)
    if path.is_dir() and (path / "model.safetensors").is_file() and _is_ours(path):
        return _checkpoint(path)
    if path.is_dir() and (path / "config.json").is_file():
        return _hf(path)
    if path.is_dir() and (path / "manifest.json").is_file():
        return _manifest(path)
    raise IGPTError(f"{path} is not a checkpoint, palette or cache made by igpt-eval")


def _is_ours(path: Path) -> bool:
    try:
        return "model_type" not in json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return True  # let the checkpoint loader report the broken config


def _palette(path: Path) -> str:
    from igpt_eval.data.palette import Palette

    p = Palette.load(path)
    kind = "grey" if p.channels == 1 else "RGB"
    return f"palette {path}: {p.k} {kind} colours, hash {p.hash}"


def _checkpoint(path: Path) -> str:
    from igpt_eval.io import file_hash
    from igpt_eval.model.checkpoint import load_model, load_palette

    model = load_model(path)
    c = model.config
    lines = [
        f"checkpoint {path}",
        f"  objective   {c.objective}",
        f"  shape       {c.n_layer} layers, d={c.n_embd}, {c.n_head} heads, "
        f"{c.n_px}x{c.n_px} px, {c.vocab_size} colours",
        f"  parameters  {model.n_params():,}",
        f"  weights     sha256 {file_hash(path / 'model.safetensors')}",
    ]
    palette = load_palette(path)
    lines.append(
        f"  palette     {palette.k} colours x {palette.channels} channels, hash {palette.hash}"
        if palette is not None
        else "  palette     none"
    )
    for extra in ("MODEL_CARD.md", "train_log.csv"):
        if (path / extra).is_file():
            lines.append(f"  {extra}")
    return "\n".join(lines)


def _hf(path: Path) -> str:
    from igpt_eval.model.hf import from_hf

    model = from_hf(path)
    c = model.config
    return (
        f"Hugging Face ImageGPT folder {path}: {c.n_layer} layers, d={c.n_embd}, "
        f"{c.n_px}x{c.n_px} px, {c.vocab_size} colours, {model.n_params():,} parameters "
        f"(import with: igpt-eval convert --from-hf {path} --out DIR)"
    )


def _manifest(path: Path) -> str:
    try:
        m = json.loads((path / "manifest.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IGPTError(f"{path / 'manifest.json'} is corrupt: {e}") from None
    from igpt_eval.cache.manifest import FORMAT

    if isinstance(m, dict) and m.get("format") == FORMAT:
        return _activations(path)
    lines = [f"cache {path}"]
    for k, v in sorted(m.items()):
        if isinstance(v, dict | list) and len(json.dumps(v)) > 80:
            v = f"<{type(v).__name__} of {len(v)}>"
        lines.append(f"  {k:<20} {v}")
    return "\n".join(lines)


def _activations(path: Path) -> str:
    """An activation cache: what it holds, how far it got, and whether its files check out."""
    from igpt_eval.cache import ActivationCache
    from igpt_eval.cache.manifest import POOLING

    cache = ActivationCache.open(path)  # a missing or truncated file is an error here
    m = cache.manifest
    if cache.complete:
        status = "complete"
        checked = f"{len(cache.verify())} files match their sha256"  # tampering: an error
    else:
        status = f"incomplete: {cache.n}/{m.n} rows (rerun the extract command to finish)"
        checked = "not yet computed (written when the cache is complete)"
    fs = m.full_sequence
    masks = f"{m.bert_masks} per image, seed {m.seed}" if m.bert_masks else "none"
    lines = [
        f"activation cache {path}",
        f"  model       {m.model} ({m.objective}), weights {m.weights_hash}",
        f"  data        {m.dataset} / {m.split}, {m.n} images, "
        f"fingerprint {m.dataset_fingerprint}, palette {m.palette_hash}",
        f"  features    layers {', '.join(map(str, cache.layers))} @ {cache.site} "
        f"({cache.sites[0]} .. {cache.sites[-1]}), d={cache.dim}, {POOLING}-pooled, {m.dtype}",
        f"  BERT masks  {masks}",
        f"  full seq.   {fs.site} [N, {m.seq_len}, d] {fs.dtype}" if fs else None,
        f"  status      {status}",
        f"  checksums   {checked}",
    ]
    return "\n".join(x for x in lines if x is not None)
