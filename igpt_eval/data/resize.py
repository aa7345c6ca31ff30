"""Square resizing of image batches.

Method: a non-square image is first centre-cropped to a square (side = its shorter side);
then PIL ``Image.resize`` with ``Image.BOX`` (area averaging, the anti-aliased choice) when
shrinking, or ``Image.BICUBIC`` when enlarging. Grey images stay 1-channel.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from igpt_eval.errors import IGPTError


def center_crop_square(images: np.ndarray) -> np.ndarray:
    """Crop ``[N, H, W, C]`` to ``[N, S, S, C]``, ``S = min(H, W)``, keeping the centre."""
    h, w = images.shape[1:3]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return images[:, top : top + s, left : left + s]


def resize_images(images: np.ndarray, n_px: int) -> np.ndarray:
    """Resize uint8 ``[N, H, W, C]`` (C 1 or 3) to ``[N, n_px, n_px, C]``.

    Non-square images are centre-cropped first. Shrinking uses ``Image.BOX`` (each output
    pixel is the area average of the input pixels it covers), enlarging uses
    ``Image.BICUBIC``. Images already ``n_px`` square are returned unchanged.
    """
    if not isinstance(n_px, int | np.integer) or n_px < 1:
        raise IGPTError(f"n_px must be a positive integer, got {n_px!r}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise IGPTError(f"expected images [N, H, W, C] with C 1 or 3, got {images.shape}")
    images = center_crop_square(images)
    side = images.shape[1]
    if side == n_px:
        return np.ascontiguousarray(images)
    resample = Image.BOX if n_px < side else Image.BICUBIC
    out = np.empty((len(images), n_px, n_px, images.shape[-1]), dtype=np.uint8)
    grey = images.shape[-1] == 1
    for i, img in enumerate(images):
        pil = Image.fromarray(img[..., 0] if grey else img, mode="L" if grey else "RGB")
        arr = np.asarray(pil.resize((n_px, n_px), resample=resample))
        out[i] = arr[..., None] if grey else arr
    return out
