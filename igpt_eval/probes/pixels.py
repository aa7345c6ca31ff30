"""The raw-pixel control (DESIGN §5): the linear-probe protocol on what the model sees.

The features are the palette-quantised image, each token decoded to its palette colour in
[-1, 1] and flattened to n_px² · channels numbers: a layer that beats them has learnt
something a linear model cannot read off the image directly. ``igpt-eval probe`` and
``igpt-eval compare`` both run it on the same token caches, splits and training sample as
the models' features, so its per-example test predictions pair with theirs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from igpt_eval.results import PIXELS, Predictions


def pixel_features(palette, tokens: np.ndarray) -> np.ndarray:
    """The palette-quantised image the model sees: tokens (N, n_px²) → colours in [-1, 1],
    flattened to (N, n_px² · channels) float32."""
    tokens = np.asarray(tokens)
    return palette.centers[tokens.astype(np.int64)].reshape(len(tokens), -1)


def probe_pixels(
    palette,
    dataset: str,
    *,
    n_px: int,
    split_seed: int = 0,
    data_dir=None,
    token_cache=None,
    device: str = "cpu",
    seed: int = 0,
    train_size: int | None = None,
    return_predictions: bool = False,
) -> list[dict] | tuple[list[dict], Predictions]:
    """The raw-pixel baseline's rows (``model = probe = site = "pixels"``, ``layer = 0``):
    L-BFGS probes (:func:`~igpt_eval.probes.protocol.probe_lbfgs`) of the token caches of
    ``dataset`` at ``n_px`` under ``palette``, split with ``split_seed``; with
    ``train_size``, the same stratified training sample as the models' activation caches
    (:func:`igpt_eval.extraction.subset_rows`). With ``return_predictions``, returns
    ``(rows, predictions)`` (one array, ``pixels/pixels/pixels``)."""
    from igpt_eval.data import load_dataset, load_tokens
    from igpt_eval.extraction import CACHE_ROOT, subset_rows
    from igpt_eval.probes.protocol import Features, probe_lbfgs
    from igpt_eval.probes.runner import SPLITS

    root = Path(token_cache) if token_cache is not None else CACHE_ROOT / "tokens"
    feats, name = {}, dataset
    for split in SPLITS:
        ds = load_dataset(dataset, split=split, n_px=n_px, data_dir=data_dir, seed=split_seed)
        tok = load_tokens(ds, palette, root, progress=False)
        tokens, labels = tok.tokens, np.asarray(tok.labels)
        if split == "train" and train_size is not None and train_size < len(labels):
            rows = subset_rows(labels, train_size, ds.seed)
            tokens, labels = tokens[rows], labels[rows]
        feats[split] = Features(pixel_features(palette, tokens)[None], labels)
        name = ds.name
    return probe_lbfgs(
        feats["train"],
        feats["val"],
        feats["test"],
        [0],
        meta=dict(model=PIXELS, objective="none", dataset=name, site_kind=PIXELS),
        sites=[PIXELS],
        device=device,
        seed=seed,
        probe=PIXELS,
        return_predictions=return_predictions,
    )
