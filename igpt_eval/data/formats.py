"""Readers for the on-disk dataset formats, each returning a :class:`Source`.

Readers only parse files; choosing splits, resizing and hashing happen in ``dataset.py``.
Every reader validates what it reads and raises :class:`IGPTError` for a missing or
malformed file, naming the file and what was expected.
"""

from __future__ import annotations

import gzip
import lzma
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from igpt_eval.data.resize import resize_images
from igpt_eval.errors import IGPTError


@dataclass
class Source:
    """A dataset as read from disk: uint8 ``[N, H, W, C]`` images and int64 labels.

    ``test_images`` is None when the format has no test split (a fixed holdout is carved
    later). ``classes`` names the label ids ``0..len(classes)-1``.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    classes: list[str]


def _check_pair(images: np.ndarray, labels: np.ndarray, where: str) -> tuple:
    """Validate an images/labels pair and normalise it to uint8 NHWC + int64."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8:
        raise IGPTError(f"{where}: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise IGPTError(
            f"{where}: images must be [N, H, W] or [N, H, W, C] with C 1 or 3, "
            f"got shape {images.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise IGPTError(
            f"{where}: labels must be 1-D with one label per image "
            f"({len(images)}), got shape {labels.shape}"
        )
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        raise IGPTError(f"{where}: labels must be non-negative integers")
    return images, labels.astype(np.int64)


# ------------------------------------------------------------------------------- IDX (MNIST)

_IDX_DTYPES = {0x08: np.uint8}


#: IDX files already decoded in this process, by (path, inode, size, modification time): one
#: ``probe`` run reads Fashion-MNIST's files for each split of the model's caches and of both
#: pixel controls, and decompressing them is most of a read (0.3 s each time). A file that
#: changed on disk has another key; each caller gets its own copy.
_IDX_READ: dict[tuple, np.ndarray] = {}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain, gzipped or xz-compressed): magic ``00 00 <type> <ndim>``,
    then ``ndim`` big-endian uint32 sizes, then the data (only unsigned bytes, type 0x08)."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _IDX_READ:
        return _IDX_READ[key].copy()
    data = _decode_idx(path)
    if key is not None:
        if len(_IDX_READ) >= 8:  # a handful of datasets' files; the oldest goes first
            _IDX_READ.pop(next(iter(_IDX_READ)))
        _IDX_READ[key] = data.copy()
    return data


def _decode_idx(path: Path) -> np.ndarray:
    """The array in IDX file ``path`` (see :func:`read_idx`)."""
    # xz: the same bytes in 26 MB instead of gzip's 31, for a copy that must travel small.
    opener = {".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open)
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise IGPTError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise IGPTError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IGPTError(f"{path}: IDX header is truncated")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise IGPTError(
            f"{path}: IDX header says shape {shape} ({size} bytes) "
            f"but the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem + ".xz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_fashion_mnist(folders: list[Path]) -> Source:
    """Fashion-MNIST from the first folder holding all four IDX files (plain, .gz or .xz)."""
    for folder in folders:
        files = {key: _find_file(folder, stem) for key, stem in _FASHION_FILES.items()}
        if all(files.values()):
            arrays = {key: read_idx(p) for key, p in files.items()}
            tr = _check_pair(arrays["train_images"], arrays["train_labels"], str(folder))
            te = _check_pair(arrays["test_images"], arrays["test_labels"], str(folder))
            return Source(*tr, *te, classes=list(FASHION_CLASSES))
    looked = ", ".join(str(f) for f in folders)
    raise IGPTError(
        f"fashion-mnist IDX files (train-images-idx3-ubyte.gz, ...) not found in: {looked}; "
        "install them with `apt-get install dataset-fashion-mnist` or pass --data-dir"
    )


# ------------------------------------------------------------------------ CIFAR (pickles)

# The official CIFAR batches hold only dicts, lists, bytes and numpy arrays. Unpickling a numpy
# array needs exactly these three globals (numpy >= 2 spells the module ``numpy._core``).
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and nothing else callable."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return getattr(np, name)


def load_pickle(path: Path):
    """Unpickle a CIFAR batch safely (numpy arrays only; keys come back as bytes)."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise IGPTError(f"cannot read {path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise IGPTError(f"{path} is not a valid CIFAR python batch ({e})") from None


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    d = load_pickle(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise IGPTError(
            f"{path} is not a CIFAR batch: expected a dict with b'data' and {label_key!r}"
        )
    data = np.asarray(d[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise IGPTError(f"{path}: b'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    # Each row is three 32x32 planes (R, G, B), each row-major.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _check_pair(np.ascontiguousarray(images), np.asarray(d[label_key]), str(path))


def _find_root(folders: list[Path], sub: str, marker: str, name: str) -> Path:
    for folder in folders:
        for cand in (folder / sub, folder):
            if (cand / marker).is_file():
                return cand
    looked = ", ".join(str(f) for f in folders)
    raise IGPTError(
        f"{name}: {sub}/{marker} not found in: {looked}; extract the official archive "
        f"there, or pass --data-dir"
    )


def _meta_names(path: Path, key: bytes) -> list[str] | None:
    if not path.is_file():
        return None
    meta = load_pickle(path)
    names = meta.get(key) if isinstance(meta, dict) else None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else None


def read_cifar10(folders: list[Path]) -> Source:
    """CIFAR-10 python batches: ``data_batch_1..5`` (train) and ``test_batch``."""
    root = _find_root(folders, "cifar-10-batches-py", "data_batch_1", "cifar10")
    parts = [_cifar_batch(root / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    test = _cifar_batch(root / "test_batch", b"labels")
    classes = _meta_names(root / "batches.meta", b"label_names") or [str(i) for i in range(10)]
    return Source(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        *test,
        classes=classes,
    )


def read_cifar100(folders: list[Path]) -> Source:
    """CIFAR-100 python files ``train`` and ``test``, with the 100 fine labels."""
    root = _find_root(folders, "cifar-100-python", "train", "cifar100")
    train = _cifar_batch(root / "train", b"fine_labels")
    test = _cifar_batch(root / "test", b"fine_labels")
    classes = _meta_names(root / "meta", b"fine_label_names") or [str(i) for i in range(100)]
    return Source(*train, *test, classes=classes)


# ------------------------------------------------------------------------------ STL-10


def _stl_pair(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = root / f"{part}_X.bin", root / f"{part}_y.bin"
    for p in (xs, ys):
        if not p.is_file():
            raise IGPTError(f"stl10: {p} not found")
    x = np.fromfile(xs, dtype=np.uint8)
    if x.size % (3 * 96 * 96):
        raise IGPTError(f"{xs}: size {x.size} is not a multiple of 3*96*96")
    # Stored column-major per image: [N, C, W, H] in C order; swap to [N, H, W, C].
    images = np.ascontiguousarray(x.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1))
    y = np.fromfile(ys, dtype=np.uint8).astype(np.int64)
    if y.size and (y.min() < 1 or y.max() > 10):
        raise IGPTError(f"{ys}: STL-10 labels must be 1..10")
    return _check_pair(images, y - 1, str(root))


def read_stl10(folders: list[Path]) -> Source:
    """STL-10 binaries ``stl10_binary/{train,test}_{X,y}.bin`` (unlabeled part unused)."""
    root = _find_root(folders, "stl10_binary", "train_X.bin", "stl10")
    train, test = _stl_pair(root, "train"), _stl_pair(root, "test")
    names = root / "class_names.txt"
    classes = names.read_text().split() if names.is_file() else [str(i) for i in range(10)]
    return Source(*train, *test, classes=classes)


# ------------------------------------------------------------------------ npz / folders


def read_npz(path: Path) -> Source:
    """An ``.npz`` with ``images`` (uint8 ``[N,H,W(,C)]``) and ``labels``; optional
    ``test_images``/``test_labels`` (else a fixed holdout is used) and ``classes``."""
    if not path.is_file():
        raise IGPTError(f"npz dataset {path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise IGPTError(f"{path} is not a readable .npz file ({e})") from None
    if "images" not in arrays or "labels" not in arrays:
        raise IGPTError(f"{path} must hold arrays 'images' and 'labels', has {sorted(arrays)}")
    train = _check_pair(arrays["images"], arrays["labels"], str(path))
    test: tuple = (None, None)
    if ("test_images" in arrays) != ("test_labels" in arrays):
        raise IGPTError(f"{path}: give both 'test_images' and 'test_labels', or neither")
    if "test_images" in arrays:
        test = _check_pair(arrays["test_images"], arrays["test_labels"], f"{path} (test)")
        if test[0].shape[1:] != train[0].shape[1:]:
            raise IGPTError(f"{path}: test images {test[0].shape} differ from train in shape")
    n_classes = int(
        max(train[1].max(initial=-1), -1 if test[1] is None else test[1].max(initial=-1)) + 1
    )
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"]]
        if len(classes) < n_classes:
            raise IGPTError(f"{path}: 'classes' names {len(classes)} but labels go to {n_classes}")
    else:
        classes = [str(i) for i in range(n_classes)]
    return Source(*train, *test, classes=classes)


_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _read_class_folders(root: Path, n_px: int | None, classes: list[str] | None = None):
    from PIL import Image

    if classes is None:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing:
        raise IGPTError(f"{root} lacks class folders {missing} that the train split has")
    if not classes:
        raise IGPTError(f"image folder {root} has no class subfolders (expected ROOT/CLASS/*.png)")
    pics, labels = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        for p in files:
            try:
                with Image.open(p) as im:
                    im.load()
                    pics.append(im.copy())
            except OSError as e:
                raise IGPTError(f"cannot read image {p}: {e}") from None
            labels.append(label)
    if not pics:
        raise IGPTError(f"image folder {root} holds no images ({', '.join(sorted(_IMAGE_EXTS))})")
    # Grey only if every image is grey; otherwise everything becomes RGB.
    grey = all(im.mode in ("1", "L", "I", "I;16") for im in pics)
    arrays = [np.asarray(im.convert("L" if grey else "RGB")) for im in pics]
    if len({a.shape for a in arrays}) > 1:
        if n_px is None:
            raise IGPTError(f"images in {root} differ in size; pass n_px (--n-px) to resize them")
        arrays = [resize_images(a[None], n_px)[0] for a in arrays]
    return np.stack(arrays), np.asarray(labels, dtype=np.int64), classes


def read_imagefolder(root: Path, n_px: int | None = None) -> Source:
    """Images in class subfolders, ``ROOT/CLASS/*.png`` (classes sorted by name). If ROOT
    holds ``train/`` and ``test/`` folders, those are the splits; otherwise a fixed holdout."""
    if not root.is_dir():
        raise IGPTError(f"image folder {root} not found")
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, classes = _read_class_folders(root / "train", n_px)
        tx, ty, _ = _read_class_folders(root / "test", n_px, classes)
        if tx.shape[1:] != x.shape[1:]:
            raise IGPTError(f"{root}: test images differ from train in size; pass n_px")
        return Source(*_check_pair(x, y, str(root)), *_check_pair(tx, ty, str(root)), classes)
    x, y, classes = _read_class_folders(root, n_px)
    return Source(*_check_pair(x, y, str(root)), None, None, classes)


def read_digits() -> Source:
    """scikit-learn's bundled 8x8 digits (no download), values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return Source(
        images[..., None],
        d.target.astype(np.int64),
        None,
        None,
        classes=[str(i) for i in range(10)],
    )
