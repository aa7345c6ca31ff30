"""Shared pytest fixtures (additive: each block belongs to the module that uses it)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _own_cache_root(tmp_path, monkeypatch):
    """Every test's managed caches (``igpt_eval.defaults.cache_root``) in its own folder,
    never the user's ``~/.cache/igpt-eval``."""
    monkeypatch.setenv("IGPT_EVAL_CACHE", str(tmp_path / "cache"))


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


# --------------------------------------------------------------------------- compare / report
@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """Two tiny models (AR and BERT, 3 blocks, 8 px) sharing one grey 16-colour palette, and
    a grey npz dataset of 4 pattern classes (96 train, 32 test images), on disk.

    Returns ``(root, ar_dir, bert_dir, npz_path)``; module-scoped so that a test module
    extracts and probes once.
    """
    import torch

    from igpt_eval.data.palette import Palette
    from igpt_eval.model import IGPT, save_model
    from igpt_eval.model.config import IGPTConfig

    root = tmp_path_factory.mktemp("pair")
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:8, :8]
    ring = np.hypot(xx - 3.5, yy - 3.5) * 50
    patterns = np.stack([xx * 32, yy * 32, ((xx + yy) % 2) * 255, ring])

    def make(n):
        labels = np.arange(n) % 4
        img = patterns[labels] + rng.normal(0, 40, (n, 8, 8))
        return np.clip(img, 0, 255).astype(np.uint8)[..., None], labels.astype(np.int64)

    (x, y), (tx, ty) = make(96), make(32)
    npz = root / "patterns.npz"
    np.savez(npz, images=x, labels=y, test_images=tx, test_labels=ty)
    palette = Palette(np.linspace(-1, 1, 16, dtype=np.float32)[:, None])
    dirs = []
    for i, objective in enumerate(("ar", "bert")):
        torch.manual_seed(i)
        model = IGPT(IGPTConfig.preset("tiny", objective=objective))
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(std=0.3)
        dirs.append(save_model(model, root / f"tiny-{objective}", palette=palette))
    return root, dirs[0], dirs[1], npz


@pytest.fixture(scope="module")
def tiny_comparison(tiny_pair):
    """``compare_models`` on :func:`tiny_pair`, written to ``<root>/cmp`` (activation caches
    in ``<root>/acts``, token caches in ``<root>/runs/cache/tokens``, where a CLI run from
    ``<root>`` finds them); one thread, as on the shared test machine."""
    import torch

    from igpt_eval.data.source import DataSource
    from igpt_eval.reporting.comparison import write_comparison
    from igpt_eval.studies.compare import compare_models

    root, ar, bert, npz = tiny_pair
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = compare_models(
            [ar, bert],
            DataSource(f"npz:{npz}", token_cache=root / "runs/cache/tokens"),
            cache_dir=root / "acts",
        )
        write_comparison(c, root / "cmp")
        return c
    finally:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------- fine-tuning
@pytest.fixture
def one_torch_thread():
    """Run the test with one torch thread (the machine's cores are shared)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
