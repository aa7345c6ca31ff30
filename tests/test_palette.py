"""Palette: encode/decode exactness, HF parity, fitting, files, and user errors."""

from __future__ import annotations

import numpy as np
import pytest

from igpt_eval.data.palette import Palette
from igpt_eval.errors import IGPTError


def _random_palette(k: int, c: int, seed: int = 0) -> Palette:
    rng = np.random.default_rng(seed)
    return Palette(rng.uniform(-1, 1, size=(k, c)).astype(np.float32))


def _random_images(n: int, h: int, w: int, c: int | None, seed: int = 1) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _brute_force(images: np.ndarray, centers: np.ndarray) -> np.ndarray:
    x = images.reshape(len(images), -1, centers.shape[1]).astype(np.float64) / 127.5 - 1
    d = ((x[:, :, None, :] - centers.astype(np.float64)[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


@pytest.mark.parametrize("c", [1, 3])
def test_encode_matches_brute_force(c):
    pal = _random_palette(37, c)
    images = _random_images(6, 9, 7, c)
    tokens = pal.encode(images)
    assert tokens.dtype == np.uint16 and tokens.shape == (6, 63)
    np.testing.assert_array_equal(tokens, _brute_force(images, pal.centers))


def test_grey_images_without_channel_axis():
    pal = _random_palette(16, 1)
    images = _random_images(3, 5, 5, None)
    np.testing.assert_array_equal(pal.encode(images), pal.encode(images[..., None]))


def test_encode_matches_hugging_face_processor():
    transformers = pytest.importorskip("transformers")
    # transformers 5 has a torchvision backend and a PIL backend; either computes the same.
    try:
        proc_cls = transformers.ImageGPTImageProcessor
        proc_cls(clusters=np.zeros((2, 3), np.float32), do_resize=False)
    except Exception:  # torchvision missing
        proc_cls = getattr(transformers, "ImageGPTImageProcessorPil", None)
        if proc_cls is None:
            pytest.skip("no usable ImageGPT image processor in this transformers")
    pal = _random_palette(64, 3, seed=5)
    images = _random_images(4, 12, 12, 3, seed=6)
    proc = proc_cls(clusters=pal.centers, do_resize=False)
    ids = np.asarray(proc(images=list(images), return_tensors="np")["input_ids"])
    np.testing.assert_array_equal(pal.encode(images), ids)


def test_decode_gives_nearest_centre_colour():
    pal = _random_palette(20, 3)
    images = _random_images(3, 4, 4, 3)
    tokens = pal.encode(images)
    out = pal.decode(tokens, n_px=4)
    assert out.dtype == np.uint8 and out.shape == (3, 4, 4, 3)
    expected = np.rint(127.5 * (pal.centers.astype(np.float64) + 1)).astype(np.uint8)
    np.testing.assert_array_equal(out.reshape(3, 16, 3), expected[tokens])
    # Decoded colours are (near) palette colours, so re-encoding is stable.
    np.testing.assert_array_equal(pal.encode(out), tokens)


def test_decode_extremes_round_and_clip():
    pal = Palette(np.array([[-1.0], [1.0], [0.0]], np.float32))
    out = pal.decode(np.array([[0, 1, 2, 0]]), n_px=2)
    assert out.reshape(-1).tolist() == [0, 255, 128, 0]


def test_chunking_does_not_change_result():
    pal = _random_palette(50, 3)
    images = _random_images(5, 10, 10, 3)
    np.testing.assert_array_equal(pal.encode(images, chunk_size=7), pal.encode(images))


def test_save_load_round_trip(tmp_path):
    pal = _random_palette(12, 3)
    path = tmp_path / "palette.npy"
    pal.save(path)
    raw = np.load(path, allow_pickle=False)  # OpenAI's plain [k, c] float32 format
    assert raw.dtype == np.float32 and raw.shape == (12, 3)
    back = Palette.load(path)
    assert back == pal and back.hash == pal.hash
    assert (back.k, back.channels) == (12, 3)


def test_load_errors(tmp_path):
    with pytest.raises(IGPTError, match="not found"):
        Palette.load(tmp_path / "missing.npy")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a numpy file")
    with pytest.raises(IGPTError, match="not a valid palette"):
        Palette.load(bad)
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IGPTError):
        Palette.load(pickled)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 2), np.float32))
    with pytest.raises(IGPTError, match="1 \\(grey\\) or 3"):
        Palette.load(wrong)


@pytest.mark.parametrize(
    "centers, match",
    [
        (np.zeros(3, np.float32), "2-D"),
        (np.zeros((4, 2), np.float32), "channels"),
        (np.full((4, 3), 1.5, np.float32), r"\[-1, 1\]"),
        (np.array([[np.nan, 0, 0]], np.float32), "finite"),
        (np.zeros((0, 3), np.float32), "at least 1"),
    ],
)
def test_bad_centres(centers, match):
    with pytest.raises(IGPTError, match=match):
        Palette(centers)


def test_encode_and_decode_errors():
    pal = _random_palette(8, 1)
    with pytest.raises(IGPTError, match="float32"):
        pal.encode(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(IGPTError, match="shape"):
        pal.encode(np.zeros((4, 4), np.uint8))
    with pytest.raises(IGPTError, match="images have 3 channels but the palette has 1"):
        pal.encode(np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(IGPTError, match=r"\[0, 8\)"):
        pal.decode(np.array([[0, 8, 1, 2]]), n_px=2)
    with pytest.raises(IGPTError, match=r"\[0, 8\)"):
        pal.decode(np.array([[0, -1, 1, 2]]), n_px=2)
    with pytest.raises(IGPTError, match="n_px=3 needs 9"):
        pal.decode(np.zeros((1, 4), np.int64), n_px=3)
    with pytest.raises(IGPTError, match="2-D"):
        pal.decode(np.zeros(4, np.int64), n_px=2)


@pytest.mark.parametrize("method", ["sklearn", "torch"])
def test_fit_is_seeded_and_sorted(method):
    images = _random_images(20, 8, 8, 3, seed=3)
    a = Palette.fit(images, k=8, seed=1, sample=2000, method=method)
    b = Palette.fit(images, k=8, seed=1, sample=2000, method=method)
    assert a == b
    assert a.k == 8 and a.channels == 3 and a.centers.dtype == np.float32
    assert a.centers.min() >= -1 and a.centers.max() <= 1
    lum = a.centers @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(lum) >= 0)


def test_fit_finds_clusters_both_methods():
    # Grey images made of four exact levels: k-means with k=4 must recover them.
    levels = np.array([0, 80, 170, 255], np.uint8)
    rng = np.random.default_rng(0)
    images = levels[rng.integers(0, 4, size=(30, 6, 6))]
    expected = levels.astype(np.float32)[:, None] / 127.5 - 1
    for method in ("sklearn", "torch"):
        pal = Palette.fit(images, k=4, seed=0, method=method)
        assert pal.channels == 1
        np.testing.assert_allclose(pal.centers, expected, atol=1e-4)


def test_fit_errors():
    images = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(IGPTError, match="distinct colours"):
        Palette.fit(images, k=4)
    with pytest.raises(IGPTError, match="k must be"):
        Palette.fit(images, k=0)
    with pytest.raises(IGPTError, match="method"):
        Palette.fit(images, k=1, method="magic")
    with pytest.raises(IGPTError, match="uint8"):
        Palette.fit(images.astype(np.int32), k=1)
