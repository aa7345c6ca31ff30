"""Datasets: every on-disk format (files written here in the real layout), splits, resizing,
fingerprints and token caches."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igpt_eval.data import (
    TokenCache,
    TokenManifest,
    cache_dir,
    list_datasets,
    load_dataset,
    load_tokens,
    read_manifest,
    resize_images,
    tokenize,
)
from igpt_eval.data.palette import Palette
from igpt_eval.data.splits import split_indices
from igpt_eval.errors import IGPTError

RNG = np.random.default_rng(7)


def _imgs(n, h, w, c=None):
    shape = (n, h, w) if c is None else (n, h, w, c)
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# ------------------------------------------------------------------------- format writers


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic 00 00 08 <ndim>, big-endian uint32 dims, then the bytes; gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion(folder: Path, n_train=12, n_test=5):
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train": (_imgs(n_train, 28, 28), np.arange(n_train, dtype=np.uint8) % 10),
        "t10k": (_imgs(n_test, 28, 28), np.arange(n_test, dtype=np.uint8) % 10),
    }
    for prefix, (x, y) in data.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return data


def _py2_style_pickle(obj) -> bytes:
    # The official batches were written by Python 2 numpy, with globals spelled numpy.core.*
    # (protocol 3: the first with a bytes opcode, still naming globals as text).
    raw = pickle.dumps(obj, protocol=3)
    return raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """[N, 32, 32, 3] -> [N, 3072]: the R plane, then G, then B, each row-major."""
    return np.stack([images[..., ch].reshape(len(images), -1) for ch in range(3)], 1).reshape(
        len(images), 3072
    )


def write_cifar10(root: Path, per_batch=4, n_test=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x, y = _imgs(per_batch, 32, 32, 3), [int(v) for v in RNG.integers(0, 10, per_batch)]
        batch = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": y,
            b"data": _cifar_rows(x),
            b"filenames": [b"f.png"] * per_batch,
        }
        (folder / f"data_batch_{i}").write_bytes(_py2_style_pickle(batch))
        train_x.append(x)
        train_y += y
    tx, ty = _imgs(n_test, 32, 32, 3), [int(v) for v in RNG.integers(0, 10, n_test)]
    (folder / "test_batch").write_bytes(
        _py2_style_pickle({b"labels": ty, b"data": _cifar_rows(tx)})
    )
    names = [
        n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()
    ]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=3))
    return np.concatenate(train_x), np.array(train_y), tx, np.array(ty)


def write_stl10(root: Path, n_train=3, n_test=2):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for part, n in (("train", n_train), ("test", n_test)):
        x = _imgs(n, 96, 96, 3)
        y = RNG.integers(1, 11, n).astype(np.uint8)  # labels 1..10 on disk
        # Column-major per channel: for each image, channel by channel, column by column.
        (folder / f"{part}_X.bin").write_bytes(x.transpose(0, 3, 2, 1).tobytes())
        (folder / f"{part}_y.bin").write_bytes(y.tobytes())
        out[part] = (x, y)
    return out


# ------------------------------------------------------------------------------ formats


def test_fashion_mnist_idx(tmp_path):
    data = write_fashion(tmp_path / "fm")
    tv = load_dataset("fashion-mnist", "trainval", data_dir=tmp_path / "fm")
    te = load_dataset("fashion-mnist", "test", data_dir=tmp_path / "fm")
    np.testing.assert_array_equal(tv.images[..., 0], data["train"][0])
    np.testing.assert_array_equal(tv.labels, data["train"][1])
    np.testing.assert_array_equal(te.images[..., 0], data["t10k"][0])
    assert tv.images.shape == (12, 28, 28, 1) and tv.labels.dtype == np.int64
    assert tv.classes[0] == "T-shirt/top" and tv.n_px == 28


def test_fashion_mnist_xz_reads_as_gzip(tmp_path):
    import lzma

    gz, xz = tmp_path / "gz", tmp_path / "xz"
    write_fashion(gz)
    xz.mkdir()
    for f in gz.iterdir():
        (xz / f.name.replace(".gz", ".xz")).write_bytes(
            lzma.compress(gzip.decompress(f.read_bytes()))
        )
    a = load_dataset("fashion-mnist", split="test", data_dir=gz)
    b = load_dataset("fashion-mnist", split="test", data_dir=xz)
    assert np.array_equal(a.images, b.images) and a.fingerprint == b.fingerprint
    (xz / "t10k-labels-idx1-ubyte.xz").write_bytes(b"not xz")
    with pytest.raises(IGPTError, match="cannot read IDX"):
        load_dataset("fashion-mnist", split="test", data_dir=xz)


def test_fashion_mnist_bad_magic(tmp_path):
    write_fashion(tmp_path)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x09\x03" + b"\x00" * 20)
    with pytest.raises(IGPTError, match="magic"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_missing_says_where(tmp_path, monkeypatch):
    import igpt_eval.data.registry as registry

    monkeypatch.setattr(registry, "SYSTEM_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(IGPTError, match="apt-get install dataset-fashion-mnist") as e:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(e.value)


def test_cifar10_pickles(tmp_path):
    x, y, tx, ty = write_cifar10(tmp_path)
    tv = load_dataset("cifar10", "trainval", data_dir=tmp_path)
    np.testing.assert_array_equal(tv.images, x)
    np.testing.assert_array_equal(tv.labels, y)
    te = load_dataset("cifar10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(te.images, tx)
    np.testing.assert_array_equal(te.labels, ty)
    assert tv.classes[3] == "cat"
    # Spot-check the plane layout independently of the writer: G of pixel (row 2, col 5).
    raw = pickle.loads(
        (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes(), encoding="bytes"
    )
    assert raw[b"data"][0, 1024 + 32 * 2 + 5] == tv.images[0, 2, 5, 1]


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    x, tx = _imgs(7, 32, 32, 3), _imgs(3, 32, 32, 3)
    fine, tfine = [int(v) for v in RNG.integers(0, 100, 7)], [5, 99, 0]
    for name, imgs, labels in (("train", x, fine), ("test", tx, tfine)):
        d = {
            b"filenames": [b"a"] * len(imgs),
            b"fine_labels": labels,
            b"coarse_labels": [0] * len(imgs),
            b"data": _cifar_rows(imgs),
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=4))  # numpy 2 spelling
    tv = load_dataset("cifar100", "trainval", data_dir=tmp_path)
    np.testing.assert_array_equal(tv.images, x)
    np.testing.assert_array_equal(tv.labels, fine)
    te = load_dataset("cifar100", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(te.labels, tfine)
    assert len(te.classes) == 100


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=3)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(evil)
    with pytest.raises(IGPTError, match="not allowed"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_stl10_binary(tmp_path):
    data = write_stl10(tmp_path)
    tv = load_dataset("stl10", "trainval", data_dir=tmp_path)
    np.testing.assert_array_equal(tv.images, data["train"][0])
    np.testing.assert_array_equal(tv.labels, data["train"][1].astype(int) - 1)
    te = load_dataset("stl10", "test", data_dir=tmp_path)
    np.testing.assert_array_equal(te.images, data["test"][0])
    # Column-major: byte c*96 + r of the red plane is pixel (row r, col c).
    raw = np.fromfile(tmp_path / "stl10_binary" / "train_X.bin", dtype=np.uint8)
    assert raw[3 * 96 + 10] == tv.images[0, 10, 3, 0]


def _write_pngs(root: Path, grey: bool, per_class=3):
    expected = {}
    for cls in ("dog", "cat"):  # deliberately unsorted; classes come out sorted
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            a = _imgs(1, 6, 6, None if grey else 3)[0]
            Image.fromarray(a).save(root / cls / f"{i:02d}.png")
            expected.setdefault(cls, []).append(a)
    return expected


@pytest.mark.parametrize("grey", [False, True])
def test_imagefolder(tmp_path, grey):
    root = tmp_path / "pics"
    (root / "train").mkdir(parents=True)
    exp_train = _write_pngs(root / "train", grey)
    exp_test = _write_pngs(root / "test", grey, per_class=1)
    tv = load_dataset(f"imagefolder:{root}", "trainval")
    assert tv.classes == ["cat", "dog"]
    assert tv.images.shape == (6, 6, 6, 1 if grey else 3)
    want = np.stack(exp_train["cat"] + exp_train["dog"])
    np.testing.assert_array_equal(tv.images, want[..., None] if grey else want)
    assert tv.labels.tolist() == [0, 0, 0, 1, 1, 1]
    te = load_dataset(f"imagefolder:{root}", "test")
    assert te.labels.tolist() == [0, 1] and len(exp_test["cat"]) == 1


def test_imagefolder_mixed_sizes_need_n_px(tmp_path):
    for cls, size in (("a", 6), ("b", 9)):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.fromarray(_imgs(1, size, size, 3)[0]).save(tmp_path / cls / f"{i}.png")
    with pytest.raises(IGPTError, match="differ in size"):
        load_dataset(f"imagefolder:{tmp_path}")
    ds = load_dataset(f"imagefolder:{tmp_path}", "trainval", n_px=4)
    assert ds.images.shape == (10, 4, 4, 3)  # 12 images minus the fixed 1/6 test holdout


def test_npz_with_and_without_test(tmp_path, tiny_npz):
    with np.load(tiny_npz) as z:
        x, y, tx = z["images"], z["labels"], z["test_images"]
    tv = load_dataset(f"npz:{tiny_npz}", "trainval")
    np.testing.assert_array_equal(tv.images, x)
    np.testing.assert_array_equal(tv.labels, y)
    np.testing.assert_array_equal(load_dataset(f"npz:{tiny_npz}", "test").images, tx)
    assert tv.classes == ["blue", "red", "green"]
    # Without test arrays: a fixed, stratified 1/6 holdout (seed-independent).
    grey = tmp_path / "grey.npz"
    np.savez(grey, images=_imgs(30, 5, 5), labels=np.arange(30) % 3)
    te0 = load_dataset(f"npz:{grey}", "test", seed=0)
    te1 = load_dataset(f"npz:{grey}", "test", seed=9)
    assert len(te0) == 5 and te0.fingerprint == te1.fingerprint
    assert np.bincount(te0.labels).min() >= 1
    assert len(load_dataset(f"npz:{grey}", "trainval")) == 25
    assert te0.images.shape[-1] == 1


def test_npz_errors(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(IGPTError, match="'images' and 'labels'"):
        load_dataset(f"npz:{bad}")
    np.savez(bad, images=np.zeros((2, 4, 4), np.float32), labels=[0, 1])
    with pytest.raises(IGPTError, match="uint8"):
        load_dataset(f"npz:{bad}")
    np.savez(bad, images=np.zeros((2, 4, 4), np.uint8), labels=[0, 1, 1])
    with pytest.raises(IGPTError, match="one label per image"):
        load_dataset(f"npz:{bad}")
    with pytest.raises(IGPTError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")


def test_digits_and_registry_errors():
    ds = load_dataset("digits", "trainval")
    assert ds.images.shape == (1497, 8, 8, 1) and ds.images.max() == 255
    assert len(load_dataset("digits", "test")) == 300
    with pytest.raises(IGPTError, match="known datasets: .*cifar10.*npz:PATH"):
        load_dataset("mnist-typo")
    with pytest.raises(IGPTError, match="unknown split 'valid'"):
        load_dataset("digits", "valid")
    assert "fashion-mnist" in list_datasets()


# ------------------------------------------------------------------ splits / resize / hash


def test_splits_deterministic_disjoint_stratified():
    labels = load_dataset("digits", "trainval").labels
    train, val = split_indices(labels, "train", 0), split_indices(labels, "val", 0)
    np.testing.assert_array_equal(train, split_indices(labels, "train", 0))
    assert not set(train) & set(val)
    assert sorted(np.concatenate([train, val])) == list(range(len(labels)))
    assert len(val) == 150
    # Stratified: each class's share in val within one example of its share overall.
    expected = np.bincount(labels) * len(val) / len(labels)
    assert np.all(np.abs(np.bincount(labels[val], minlength=10) - expected) <= 1)
    assert not np.array_equal(val, split_indices(labels, "val", 1))
    tv = load_dataset("digits", "trainval")
    va = load_dataset("digits", "val")
    np.testing.assert_array_equal(va.images, tv.images[val])
    np.testing.assert_array_equal(load_dataset("digits", "train").labels, tv.labels[train])


def test_resize_shapes_and_methods():
    grey = _imgs(2, 8, 8, 1)
    assert resize_images(grey, 4).shape == (2, 4, 4, 1)
    assert resize_images(grey, 12).shape == (2, 12, 12, 1)
    # BOX downsampling by 2 averages each 2x2 block.
    blocks = np.kron(RNG.integers(0, 64, (1, 3, 3)), np.ones((1, 2, 2))).astype(np.uint8)
    np.testing.assert_array_equal(resize_images(blocks[..., None], 3)[..., 0], blocks[:, ::2, ::2])
    # Non-square: centre-cropped to square first.
    wide = np.zeros((1, 4, 8, 3), np.uint8)
    wide[:, :, 2:6] = 200
    out = resize_images(wide, 4)
    assert out.shape == (1, 4, 4, 3) and np.all(out == 200)
    ds = load_dataset("digits", "val", n_px=16)
    assert ds.images.shape == (150, 16, 16, 1) and ds.n_px == 16


def test_fingerprint_tracks_content(tmp_path):
    path = tmp_path / "d.npz"
    x, y = _imgs(20, 4, 4, 3), np.arange(20) % 2
    np.savez(path, images=x, labels=y)
    a = load_dataset(f"npz:{path}", "train")
    assert a.fingerprint == load_dataset(f"npz:{path}", "train").fingerprint
    assert a.fingerprint != load_dataset(f"npz:{path}", "train", seed=1).fingerprint
    assert a.fingerprint != load_dataset(f"npz:{path}", "train", n_px=2).fingerprint
    x[0, 0, 0, 0] ^= 1
    np.savez(path, images=x, labels=y)
    assert a.fingerprint != load_dataset(f"npz:{path}", "train").fingerprint


def test_real_fashion_mnist_if_installed():
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    sizes = {s: len(load_dataset("fashion-mnist", s)) for s in ("trainval", "test", "val")}
    assert sizes == {"trainval": 60000, "test": 10000, "val": 6000}
    train = load_dataset("fashion-mnist", "train")
    assert train.images.shape == (54000, 28, 28, 1) and train.classes[-1] == "Ankle boot"


# ------------------------------------------------------------------------- token caches


@pytest.fixture
def grey_setup(tmp_path):
    path = tmp_path / "g.npz"
    np.savez(path, images=_imgs(24, 6, 6), labels=np.arange(24) % 2)
    ds = load_dataset(f"npz:{path}", "trainval")
    pal = Palette(np.linspace(-1, 1, 8, dtype=np.float32)[:, None])
    return path, ds, pal


def test_tokenize_writes_and_reopens(tmp_path, grey_setup, monkeypatch):
    _, ds, pal = grey_setup
    out = tmp_path / "cache"
    cache = tokenize(ds, pal, out, batch_size=5)
    assert isinstance(cache.tokens, np.memmap) and cache.tokens.dtype == np.uint16
    np.testing.assert_array_equal(cache.tokens, pal.encode(ds.images))
    np.testing.assert_array_equal(cache.labels, ds.labels)
    m = read_manifest(out)
    assert m.palette_hash == pal.hash and m.dataset_fingerprint == ds.fingerprint
    assert m.n == 20 and m.n_px == 6
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["complete"] is True and TokenManifest.from_json(on_disk).to_json() == on_disk

    def boom(*a, **k):
        raise AssertionError("re-encoded a valid cache")

    monkeypatch.setattr(Palette, "encode", boom)
    again = tokenize(ds, pal, out)
    np.testing.assert_array_equal(again.tokens, cache.tokens)
    assert TokenCache.open(out, pal, ds.fingerprint).manifest == m


def test_cache_refuses_or_rebuilds_on_mismatch(tmp_path, grey_setup):
    path, ds, pal = grey_setup
    out = tmp_path / "cache"
    tokenize(ds, pal, out)
    other = Palette(np.linspace(-1, 1, 5, dtype=np.float32)[:, None])
    with pytest.raises(IGPTError, match="--overwrite"):
        tokenize(ds, other, out)
    with pytest.raises(IGPTError, match="palette"):
        TokenCache.open(out, other)
    # Changed data: refused too, then rebuilt with overwrite.
    x = np.load(path)["images"]
    x[0] = 255 - x[0]
    np.savez(path, images=x, labels=np.arange(24) % 2)
    ds2 = load_dataset(f"npz:{path}", "trainval")
    with pytest.raises(IGPTError, match="dataset fingerprint"):
        tokenize(ds2, pal, out)
    rebuilt = tokenize(ds2, pal, out, overwrite=True)
    np.testing.assert_array_equal(rebuilt.tokens, pal.encode(ds2.images))


def test_incomplete_cache_is_absent(tmp_path, grey_setup):
    _, ds, pal = grey_setup
    out = tmp_path / "cache"
    tokenize(ds, pal, out)
    m = read_manifest(out)
    (out / "manifest.json").write_text('{"format": "igpt-eval-tokens", "complete": false}')
    assert read_manifest(out) is None
    with pytest.raises(IGPTError, match="no complete token cache"):
        TokenCache.open(out)
    # Rebuilt without needing overwrite, since nothing valid was there.
    assert tokenize(ds, pal, out).manifest.dataset_fingerprint == m.dataset_fingerprint


def test_load_tokens_in_cache_root(tmp_path, grey_setup):
    path, ds, pal = grey_setup
    root = tmp_path / "root"
    cache = load_tokens(ds, pal, root)
    assert cache.path == cache_dir(root, ds, pal)
    assert (
        cache.path.name == f"npz_{str(path).strip('/').replace('/', '_')}-trainval-6px-{pal.hash}"
    )
    assert load_tokens(ds, pal, root).manifest == cache.manifest
    x = np.load(path)["images"]
    np.savez(path, images=255 - x, labels=np.arange(24) % 2)
    ds2 = load_dataset(f"npz:{path}", "trainval")
    with pytest.raises(IGPTError):
        load_tokens(ds2, pal, root, overwrite=False)
    with pytest.warns(UserWarning, match="stale"):
        fresh = load_tokens(ds2, pal, root)
    assert fresh.manifest.dataset_fingerprint == ds2.fingerprint


def test_tokenize_rejects_channel_mismatch(tmp_path, tiny_npz):
    ds = load_dataset(f"npz:{tiny_npz}", "test")
    grey = Palette(np.zeros((2, 1), np.float32) + [[-1], [1]])
    with pytest.raises(IGPTError, match="3 channels but the palette has 1"):
        tokenize(ds, grey, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_resized_splits_are_reused_within_a_process_never_stale(tmp_path):
    from igpt_eval.data.resize import resize_images

    fm = tmp_path / "fm"
    data = write_fashion(fm, n_train=20)
    first = load_dataset("fashion-mnist", "test", n_px=16, data_dir=fm)
    np.testing.assert_array_equal(first.images, resize_images(data["t10k"][0][..., None], 16))
    first.images[:] = 0  # a caller's writes do not reach the next load
    again = load_dataset("fashion-mnist", "test", n_px=16, data_dir=fm)
    np.testing.assert_array_equal(again.images, resize_images(data["t10k"][0][..., None], 16))
    changed = 255 - data["t10k"][0]  # the same files rewritten with other pixels
    write_idx(fm / "t10k-images-idx3-ubyte.gz", changed)
    fresh = load_dataset("fashion-mnist", "test", n_px=16, data_dir=fm)
    np.testing.assert_array_equal(fresh.images, resize_images(changed[..., None], 16))
    assert fresh.fingerprint != again.fingerprint


def test_idx_reads_are_kept_per_file_version_and_handed_out_as_copies(tmp_path):
    from igpt_eval.data.formats import read_idx

    path = tmp_path / "x-images-idx3-ubyte.gz"
    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    write_idx(path, a)
    first = read_idx(path)
    first[:] = 0  # the caller's copy: the next read is unaffected
    np.testing.assert_array_equal(read_idx(path), a)
    write_idx(path, a[::-1].copy())  # same size, new content: a new version of the file
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    np.testing.assert_array_equal(read_idx(path), a[::-1])
