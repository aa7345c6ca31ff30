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
from igpt_eval.data.source import DataSource
from igpt_eval.data.splits import subset_rows
from igpt_eval.errors import IGPTError
from igpt_eval.names import PIXELS, PIXELS_NATIVE, SPLITS, ModelKind
from igpt_eval.predictions import Predictions, Scored
from igpt_eval.probes.protocol import Features, Protocol, probe_lbfgs


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
    sizes: dict | None,
    device: str,
    seed: int,
) -> Scored:
    """Probe one pixel control: ``load(split)`` gives ``(dataset, raw rows, labels)``, each
    split is cut to the stratified sample its ``sizes`` entry asks for (the models' caches
    draw the same rows: :func:`igpt_eval.data.splits.subset_rows`, same labels and seed),
    and only the kept rows go through ``featurize``."""
    feats = {}
    for split in SPLITS:
        ds, raw, labels = load(split)
        labels = np.asarray(labels)
        n = (sizes or {}).get(split)
        if n is not None and n < len(labels):
            rows = subset_rows(labels, n, ds.seed)
            raw, labels = raw[rows], labels[rows]
        feats[split] = Features(featurize(raw)[None], labels)
    return probe_lbfgs(
        feats["train"],
        feats["val"],
        feats["test"],
        [0],
        meta=dict(
            model=name,
            model_kind=ModelKind.CONTROL,
            objective="none",
            dataset=ds.name,
            site_kind=name,
        ),  # fmt: skip
        sites=[name],
        protocol=Protocol(device=device, seed=seed),
        probe=name,
    )


def _named(data: DataSource) -> DataSource:
    if data.name is None:
        raise IGPTError("a pixel control needs the dataset named")
    return data


def probe_pixels(
    palette,
    data: DataSource,
    *,
    n_px: int,
    sizes: dict | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> Scored:
    """The raw-pixel baseline (``model = probe = site = "pixels"``, ``layer = 0``): L-BFGS
    probes (:func:`~igpt_eval.probes.protocol.probe_lbfgs`) of the token caches of the
    dataset ``data`` names, at ``n_px`` under ``palette``, split with its split seed (``None``:
    0); ``sizes`` (``{"train": n, ...}``; a missing or ``None`` entry: the whole split) asks
    for the same stratified sample of each split as the models' activation caches
    (:func:`igpt_eval.data.splits.subset_rows`). One prediction array,
    ``pixels/pixels/pixels``."""
    data = _named(data)

    def load(split):
        ds = load_dataset(data.name, split=split, n_px=n_px, data_dir=data.data_dir,
                          seed=data.split_seed or 0)  # fmt: skip
        tok = load_tokens(ds, palette, data.token_cache)
        return ds, tok.tokens, tok.labels

    return _probe_control(
        PIXELS, load, lambda tokens: pixel_features(palette, tokens),
        sizes=sizes, device=device, seed=seed,
    )  # fmt: skip


def probe_native_pixels(
    data: DataSource, *, sizes: dict | None = None, device: str = "cpu", seed: int = 0
) -> Scored:
    """The native-resolution raw-pixel control (``model = probe = site =
    "pixels_native"``, ``layer = 0``, ``n_features`` = H · W · channels): the same protocol
    and samples as :func:`probe_pixels`, on the images as the dataset's files hold them
    (:func:`native_pixel_features`; no token cache: nothing is quantised). The cost grows
    with the native size (Fashion-MNIST: 784 features; STL-10 would have 27,648)."""
    data = _named(data)

    def load(split):
        ds = load_dataset(data.name, split=split, n_px=None, data_dir=data.data_dir,
                          seed=data.split_seed or 0)  # fmt: skip
        return ds, ds.images, ds.labels

    return _probe_control(
        PIXELS_NATIVE, load, native_pixel_features, sizes=sizes, device=device, seed=seed
    )


def probe_pixel_controls(
    palette,
    data: DataSource,
    *,
    n_px: int,
    pixels: bool = True,
    native: bool = False,
    sizes: dict | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> Scored:
    """The pixel controls asked for: ``pixels`` (palette-quantised at ``n_px``,
    :func:`probe_pixels`) and ``native`` (:func:`probe_native_pixels`), on the same
    samples."""
    done = []
    if pixels:
        done.append(probe_pixels(palette, data, n_px=n_px, sizes=sizes, device=device, seed=seed))
    if native:
        done.append(probe_native_pixels(data, sizes=sizes, device=device, seed=seed))
    rows, predictions = [], Predictions()
    for r, p in done:
        rows += r
        predictions.update(p)
    return Scored(rows, predictions)
