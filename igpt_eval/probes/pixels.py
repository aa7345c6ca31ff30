"""The raw-pixel controls (docs/design.md): the linear-probe protocol on the images themselves.

Two of them, each a single "layer" probed with :func:`~igpt_eval.probes.protocol.probe_lbfgs`:

- ``pixels``: what the model sees, the palette-quantised image at the model's ``n_px``, each
  token decoded to its palette colour in [-1, 1] and flattened to n_px² · channels numbers;
- ``pixels_native``: the dataset's own pixels at their native resolution (Fashion-MNIST:
  28×28 grey), neither resized nor quantised, scaled ``x/127.5 − 1`` like the palette's
  input and flattened to H · W · channels numbers.

A layer that beats them has learnt something a linear model cannot read off the image
directly. ``igpt-eval probe`` and ``igpt-eval compare`` run them on the same splits, the same
stratified samples (training, and validation/test when those are capped) and so the same
test images as the models' features, in the same order: their per-example test predictions
pair with the models'.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from igpt_eval.data import load_dataset, load_tokens
from igpt_eval.data.splits import subset_rows
from igpt_eval.names import PIXELS, PIXELS_NATIVE
from igpt_eval.predictions import Predictions
from igpt_eval.probes.protocol import SPLITS, Features, probe_lbfgs


def pixel_features(palette, tokens: np.ndarray) -> np.ndarray:
    """The palette-quantised image the model sees: tokens (N, n_px²) → colours in [-1, 1],
    flattened to (N, n_px² · channels) float32."""
    tokens = np.asarray(tokens)
    return palette.centers[tokens.astype(np.int64)].reshape(len(tokens), -1)


def native_pixel_features(images: np.ndarray) -> np.ndarray:
    """The raw images (N, H, W, C) uint8 → ``x/127.5 − 1`` in [-1, 1], flattened to
    (N, H · W · C) float32 (the scaling the palette applies before quantising)."""
    images = np.asarray(images)
    return (images.reshape(len(images), -1).astype(np.float32) / 127.5) - 1.0


def _probe_control(
    name: str,
    load: Callable[[str], tuple],
    featurize: Callable[[np.ndarray], np.ndarray],
    *,
    sizes: dict,
    device: str,
    seed: int,
    return_predictions: bool,
):
    """Probe one pixel control: ``load(split)`` gives ``(dataset, raw rows, labels)``, each
    split is cut to the stratified sample its ``sizes`` entry asks for (the models' caches
    draw the same rows: :func:`igpt_eval.data.splits.subset_rows`, same labels and seed),
    and only the kept rows go through ``featurize``."""
    feats = {}
    for split in SPLITS:
        ds, raw, labels = load(split)
        labels = np.asarray(labels)
        n = sizes.get(split)
        if n is not None and n < len(labels):
            rows = subset_rows(labels, n, ds.seed)
            raw, labels = raw[rows], labels[rows]
        feats[split] = Features(featurize(raw)[None], labels)
    return probe_lbfgs(
        feats["train"],
        feats["val"],
        feats["test"],
        [0],
        meta=dict(model=name, objective="none", dataset=ds.name, site_kind=name),
        sites=[name],
        device=device,
        seed=seed,
        probe=name,
        return_predictions=return_predictions,
    )


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
    val_size: int | None = None,
    test_size: int | None = None,
    return_predictions: bool = False,
) -> list[dict] | tuple[list[dict], Predictions]:
    """The raw-pixel baseline's rows (``model = probe = site = "pixels"``, ``layer = 0``):
    L-BFGS probes (:func:`~igpt_eval.probes.protocol.probe_lbfgs`) of the token caches of
    ``dataset`` at ``n_px`` under ``palette``, split with ``split_seed``; with
    ``train_size`` (``val_size``, ``test_size``), the same stratified sample of that split
    as the models' activation caches (:func:`igpt_eval.data.splits.subset_rows`). With
    ``return_predictions``, returns ``(rows, predictions)`` (one array,
    ``pixels/pixels/pixels``)."""

    def load(split):
        ds = load_dataset(dataset, split=split, n_px=n_px, data_dir=data_dir, seed=split_seed)
        tok = load_tokens(ds, palette, token_cache)
        return ds, tok.tokens, tok.labels

    return _probe_control(
        PIXELS,
        load,
        lambda tokens: pixel_features(palette, tokens),
        sizes=dict(train=train_size, val=val_size, test=test_size),
        device=device,
        seed=seed,
        return_predictions=return_predictions,
    )


def probe_native_pixels(
    dataset: str,
    *,
    split_seed: int = 0,
    data_dir=None,
    device: str = "cpu",
    seed: int = 0,
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    return_predictions: bool = False,
) -> list[dict] | tuple[list[dict], Predictions]:
    """The native-resolution raw-pixel control's rows (``model = probe = site =
    "pixels_native"``, ``layer = 0``, ``n_features`` = H · W · channels): the same protocol
    and samples as :func:`probe_pixels`, on ``dataset``'s images as its files hold them
    (:func:`native_pixel_features`; no token cache: nothing is quantised). The cost grows
    with the native size (Fashion-MNIST: 784 features; STL-10 would have 27,648)."""

    def load(split):
        ds = load_dataset(dataset, split=split, n_px=None, data_dir=data_dir, seed=split_seed)
        return ds, ds.images, ds.labels

    return _probe_control(
        PIXELS_NATIVE,
        load,
        native_pixel_features,
        sizes=dict(train=train_size, val=val_size, test=test_size),
        device=device,
        seed=seed,
        return_predictions=return_predictions,
    )


def probe_pixel_controls(
    palette,
    dataset: str,
    *,
    n_px: int,
    pixels: bool = True,
    native: bool = False,
    token_cache=None,
    **common,
) -> tuple[list[dict], Predictions]:
    """Rows and test predictions of the pixel controls asked for: ``pixels`` (palette-
    quantised at ``n_px``, :func:`probe_pixels`) and ``native`` (:func:`probe_native_pixels`);
    ``common`` (split seed, data folder, device, seed, sample sizes) goes to both."""
    kw = dict(common, return_predictions=True)
    done = []
    if pixels:
        done.append(probe_pixels(palette, dataset, n_px=n_px, token_cache=token_cache, **kw))
    if native:
        done.append(probe_native_pixels(dataset, **kw))
    rows, predictions = [], Predictions()
    for r, p in done:
        rows += r
        predictions.update(p)
    return rows, predictions
