"""Shared pytest fixtures (additive: each block belongs to the module that uses it)."""

from __future__ import annotations

import numpy as np
import pytest


# --------------------------------------------------------------------------- palette / data
@pytest.fixture
def tiny_npz(tmp_path):
    """A tiny RGB npz dataset (60 train images of 8x8 in 3 classes, 12 test) on disk.

    Each class has a distinct mean colour so palettes and probes have something to find.
    """
    rng = np.random.default_rng(123)

    def make(n):
        labels = np.arange(n) % 3
        base = np.array([[40, 40, 200], [200, 40, 40], [40, 200, 40]])[labels]
        noise = rng.integers(-30, 30, size=(n, 8, 8, 3))
        images = np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)
        return images, labels.astype(np.int64)

    x, y = make(60)
    tx, ty = make(12)
    path = tmp_path / "tiny.npz"
    np.savez(
        path,
        images=x,
        labels=y,
        test_images=tx,
        test_labels=ty,
        classes=np.array(["blue", "red", "green"]),
    )
    return path
