"""Images an AR model draws: unconditional samples and completions of test images' bottom
halves, as uint8 arrays that :mod:`igpt_eval.reporting.model_figures` lays out.

    images = sample_images(model, palette, 16, seed=0)       # [16, H, W, C] uint8
    c = complete_images(model, palette, test_tokens, n=8)    # originals and completions
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from igpt_eval.errors import IGPTError

#: The grey the blanked bottom half of a "top half given" image is drawn in.
GREY = 128


@dataclass(frozen=True)
class Sampling:
    """How images were drawn: the softmax temperature, the top-k cut (None: none) and the
    seed; the figures' titles say it."""

    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class Completions:
    """Test images and their completions: ``originals`` [n, H, W, C], ``given`` (the top
    half, the bottom blanked grey) and ``completed`` [samples, n, H, W, C], uint8."""

    originals: np.ndarray
    given: np.ndarray
    completed: np.ndarray
    sampling: Sampling


def _check(model, palette) -> None:
    if palette is None:
        raise IGPTError("the model has no palette.npy, so its samples cannot be drawn as images")
    model.config.check_palette(palette)


def sample_images(model, palette, n: int = 16, sampling: Sampling | None = None) -> np.ndarray:
    """``n`` unconditional samples of an AR ``model``, decoded to uint8 ``[n, H, W, C]``."""
    _check(model, palette)
    s = sampling or Sampling()
    ids = model.generate(n, temperature=s.temperature, top_k=s.top_k, seed=s.seed)
    return palette.decode(ids.cpu().numpy(), model.config.n_px)


def complete_images(
    model, palette, tokens, n: int = 8, samples: int = 3, sampling: Sampling | None = None
) -> Completions:
    """The first ``n`` images of ``tokens`` (``[N, n_px²]`` palette ids) with ``samples``
    completions each of the bottom half, drawn by ``model.generate(prefix=top half)``."""
    _check(model, palette)
    s = sampling or Sampling()
    n_px = model.config.n_px
    tokens = np.asarray(tokens[:n], dtype=np.int64)
    if tokens.ndim != 2 or tokens.shape[1] != n_px * n_px:
        raise IGPTError(
            f"tokens must be [N, {n_px * n_px}] for this {n_px}x{n_px} model, got {tokens.shape}"
        )
    if len(tokens) == 0 or samples < 1:
        raise IGPTError("need at least one image and one sample to complete")
    n = len(tokens)
    half = (n_px // 2) * n_px  # the top n_px/2 rows in raster order
    # All completions in one batch: image i's samples are rows i, i + n, i + 2n, ...
    prefix = torch.from_numpy(np.tile(tokens[:, :half], (samples, 1)))
    done = model.generate(prefix=prefix, temperature=s.temperature, top_k=s.top_k, seed=s.seed)
    done = palette.decode(done.cpu().numpy(), n_px).reshape(samples, n, n_px, n_px, -1)
    originals = palette.decode(tokens, n_px)
    given = originals.copy()
    given[:, n_px // 2 :] = GREY
    return Completions(originals, given, done, s)
