"""The k-means colour palette that turns pixels into iGPT tokens.

A palette holds ``k`` centres in ``[-1, 1]^c`` (``c = 1`` for grey, 3 for RGB). Pixels are
scaled ``x / 127.5 - 1`` and each one becomes the id of its nearest centre (squared Euclidean
distance), so an ``n_px x n_px`` image becomes ``n_px**2`` ids in raster order. On disk a
palette is OpenAI's ``kmeans_centers.npy``: a plain float32 ``[k, c]`` array.

Example::

    pal = Palette.fit(images, k=16, seed=0)
    tokens = pal.encode(images)          # uint16 [N, H*W]
    again = pal.decode(tokens, n_px=28)  # uint8 [N, 28, 28, C]
    pal.save("palette.npy"); Palette.load("palette.npy")
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from igpt_eval.errors import IGPTError
from igpt_eval.io import array_hash, atomic_write
from igpt_eval.log import progress_bar

# ITU-R BT.601 luma weights: sorting RGB centres by luminance puts dark ids first.
_LUMA = np.array([0.299, 0.587, 0.114])


def _as_nhwc(images, what: str = "images") -> np.ndarray:
    """Check a uint8 batch ``[N, H, W]`` or ``[N, H, W, C]`` and return it as ``[N, H, W, C]``."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise IGPTError(
            f"{what} must be uint8 pixels in 0..255, got dtype {images.dtype}; "
            "convert with .astype(np.uint8) after scaling to 0..255"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise IGPTError(
            f"{what} must be [N, H, W] (grey) or [N, H, W, C], got shape {images.shape}"
        )
    return images


def _scale(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1], the same arithmetic as OpenAI's ``x/127.5 - 1``."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32) / 127.5 - 1.0


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances ``[n, k]`` as ``a² - 2ab + b²``: the formula (and float32 rounding)
    of Hugging Face's ImageGPT processor, so that our ids match theirs token for token."""
    a2 = torch.sum(a**2, dim=1)
    b2 = torch.sum(b**2, dim=1)
    return a2[:, None] - 2 * (a @ b.T) + b2[None, :]


def _sort_centers(centers: np.ndarray) -> np.ndarray:
    """Sort centres by luminance, then channel by channel, so a fit is reproducible and
    token ids run from dark to light."""
    lum = centers[:, 0] if centers.shape[1] == 1 else centers @ _LUMA
    # np.lexsort sorts by the last key first.
    order = np.lexsort([centers[:, j] for j in reversed(range(centers.shape[1]))] + [lum])
    return centers[order]


class Palette:
    """A k-means colour palette: ``k`` float32 centres ``[k, c]`` in ``[-1, 1]``."""

    def __init__(self, centers):
        c = np.asarray(centers)
        if c.ndim != 2:
            raise IGPTError(f"palette centres must be a 2-D array [k, c], got shape {c.shape}")
        if c.shape[1] not in (1, 3):
            raise IGPTError(
                f"palette centres must have 1 (grey) or 3 (RGB) channels, got {c.shape[1]}"
            )
        if c.shape[0] < 1:
            raise IGPTError("palette has no centres; k must be at least 1")
        if c.shape[0] > 65536:
            raise IGPTError(f"palette has {c.shape[0]} centres; uint16 tokens allow at most 65536")
        if not np.issubdtype(c.dtype, np.number) or not np.all(np.isfinite(c)):
            raise IGPTError("palette centres must be finite numbers")
        if c.min() < -1.0 or c.max() > 1.0:
            raise IGPTError(
                f"palette centres must lie in [-1, 1] (pixels scaled x/127.5 - 1), "
                f"got range [{c.min():.3g}, {c.max():.3g}]"
            )
        self._centers = np.ascontiguousarray(c, dtype=np.float32)
        self._centers.setflags(write=False)

    # ------------------------------------------------------------------ properties
    @property
    def centers(self) -> np.ndarray:
        """The centres, float32 ``[k, c]`` (read-only)."""
        return self._centers

    @property
    def k(self) -> int:
        """Number of centres (the model's vocabulary size)."""
        return self._centers.shape[0]

    @property
    def channels(self) -> int:
        """1 for a grey palette, 3 for RGB."""
        return self._centers.shape[1]

    @property
    def hash(self) -> str:
        """Content hash of the centres (used in cache manifests)."""
        return array_hash(self._centers)

    def __repr__(self) -> str:
        return f"Palette(k={self.k}, channels={self.channels}, hash={self.hash})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Palette) and np.array_equal(self._centers, other._centers)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        images,
        k: int,
        seed: int = 0,
        sample: int = 200_000,
        device: str = "cpu",
        method: str | None = None,
        max_iter: int = 100,
    ) -> Palette:
        """Fit a ``k``-colour palette by k-means on a seeded random sample of pixels.

        ``images`` is uint8 ``[N, H, W]`` or ``[N, H, W, C]``. ``method`` is ``"sklearn"``
        (scikit-learn ``MiniBatchKMeans``, the default on CPU) or ``"torch"`` (k-means++ then
        Lloyd iterations in torch, the default for any other ``device``, e.g. ``"cuda"``).
        Centres are sorted by luminance, so the same inputs and seed give the same palette.
        """
        images = _as_nhwc(images)
        c = images.shape[-1]
        if c not in (1, 3):
            raise IGPTError(f"images must have 1 or 3 channels to fit a palette, got {c}")
        if not isinstance(k, int | np.integer) or k < 1 or k > 65536:
            raise IGPTError(f"k must be an integer in 1..65536, got {k!r}")
        if sample < 1:
            raise IGPTError(f"sample must be a positive number of pixels, got {sample}")
        method = method or ("sklearn" if str(device) == "cpu" else "torch")
        if method not in ("sklearn", "torch"):
            raise IGPTError(f"unknown k-means method {method!r}; use 'sklearn' or 'torch'")

        flat = images.reshape(-1, c)
        rng = np.random.default_rng(seed)
        n = min(int(sample), flat.shape[0])
        idx = np.sort(rng.choice(flat.shape[0], size=n, replace=False))
        pixels = flat[idx]
        # More centres than distinct colours would leave duplicate (empty) centres.
        n_distinct = len(np.unique(pixels, axis=0))
        if k > n_distinct:
            raise IGPTError(
                f"k={k} exceeds the {n_distinct} distinct colours in the pixel sample; "
                f"use a smaller k or a larger --sample"
            )
        x = _scale(pixels)
        if method == "sklearn":
            centers = _fit_sklearn(x.numpy(), k, seed)
        else:
            centers = _fit_torch(x, k, seed, device, max_iter)
        centers = np.clip(centers.astype(np.float32), -1.0, 1.0)
        return cls(_sort_centers(centers))

    # ------------------------------------------------------------------ encode / decode
    def encode(self, images, chunk_size: int = 65536) -> np.ndarray:
        """Map uint8 images ``[N, H, W(, C)]`` to palette ids, uint16 ``[N, H*W]`` (raster).

        Distances are computed in float32 torch, ``chunk_size`` pixels at a time, so memory
        stays bounded (about ``chunk_size * k * 4`` bytes) whatever ``N`` is.
        """
        images = _as_nhwc(images)
        if images.shape[-1] != self.channels:
            raise IGPTError(
                f"images have {images.shape[-1]} channels but the palette has "
                f"{self.channels}; use a {'grey' if images.shape[-1] == 1 else 'colour'} "
                f"palette fitted on this dataset"
            )
        if chunk_size < 1:
            raise IGPTError(f"chunk_size must be positive, got {chunk_size}")
        n, h, w, c = images.shape
        flat = images.reshape(-1, c)
        out = np.empty(flat.shape[0], dtype=np.uint16)
        centers = torch.from_numpy(self._centers.copy())
        with torch.no_grad():
            for start in range(0, flat.shape[0], chunk_size):
                x = _scale(flat[start : start + chunk_size])
                ids = torch.argmin(_sq_dist(x, centers), dim=1)
                out[start : start + len(x)] = ids.numpy().astype(np.uint16)
        return out.reshape(n, h * w)

    def decode(self, tokens, n_px: int) -> np.ndarray:
        """Map ids ``[N, n_px*n_px]`` back to uint8 images ``[N, n_px, n_px, C]``
        (each pixel is its centre's colour, ``127.5 * (c + 1)`` rounded)."""
        t = np.asarray(tokens)
        if t.ndim != 2:
            raise IGPTError(f"tokens must be a 2-D array [N, n_px*n_px], got shape {t.shape}")
        if t.size and not np.issubdtype(t.dtype, np.integer):
            raise IGPTError(f"tokens must be integer palette ids, got dtype {t.dtype}")
        if t.shape[1] != n_px * n_px:
            raise IGPTError(f"tokens have length {t.shape[1]} but n_px={n_px} needs {n_px * n_px}")
        if t.size and (t.min() < 0 or t.max() >= self.k):
            raise IGPTError(
                f"token ids must lie in [0, {self.k}) for this palette, "
                f"got range [{t.min()}, {t.max()}]"
            )
        rgb = np.clip(np.rint(127.5 * (self._centers.astype(np.float64) + 1.0)), 0, 255)
        return rgb.astype(np.uint8)[t.astype(np.int64)].reshape(
            t.shape[0], n_px, n_px, self.channels
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the centres as a plain float32 ``[k, c]`` .npy (OpenAI's format), atomically."""
        with atomic_write(path, "wb") as f:
            np.save(f, self._centers, allow_pickle=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Palette:
        """Read a palette written by :meth:`save` or OpenAI's ``kmeans_centers.npy``."""
        path = Path(path)
        if not path.is_file():
            raise IGPTError(f"palette file {path} not found; fit one with `igpt-eval palette`")
        try:
            centers = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise IGPTError(f"{path} is not a valid palette .npy file ({e})") from None
        if not isinstance(centers, np.ndarray):
            raise IGPTError(f"{path} holds several arrays; a palette is one [k, c] array")
        return cls(centers)


def _fit_sklearn(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    # scikit-learn exposes no per-iteration hook, so the bar only marks the one long step.
    with progress_bar(total=1, desc=f"k-means k={k} (scikit-learn)") as bar:
        km = MiniBatchKMeans(
            n_clusters=k, random_state=seed, n_init=3, batch_size=max(4096, 4 * k)
        ).fit(x)
        bar.update(1)
    return km.cluster_centers_


def _chunked_nearest(x: torch.Tensor, c: torch.Tensor, chunk: int = 65536):
    """Nearest-centre ids and squared distances, chunk by chunk."""
    ids, dists = [], []
    for s in range(0, len(x), chunk):
        d = _sq_dist(x[s : s + chunk], c)
        m = torch.min(d, dim=1)
        ids.append(m.indices)
        dists.append(m.values.clamp_min_(0))
    return torch.cat(ids), torch.cat(dists)


def _fit_torch(x: torch.Tensor, k: int, seed: int, device: str, max_iter: int) -> np.ndarray:
    """k-means++ initialisation then Lloyd iterations, on ``device``."""
    try:
        x = x.to(device)
    except (RuntimeError, AssertionError) as e:
        raise IGPTError(f"cannot use device {device!r} for k-means: {e}") from None
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    n = len(x)

    # k-means++: each new centre drawn with probability proportional to its squared distance.
    centers = torch.empty(k, x.shape[1], device=x.device)
    centers[0] = x[torch.randint(n, (1,), generator=g).item()]
    best = _chunked_nearest(x, centers[:1])[1]
    for j in progress_bar(range(1, k), desc="k-means++ init", leave=False):
        total = best.sum()
        if total <= 0:  # every point already sits on a centre
            i = torch.randint(n, (1,), generator=g).item()
        else:
            i = torch.multinomial((best / total).cpu().double(), 1, generator=g).item()
        centers[j] = x[i]
        best = torch.minimum(best, _chunked_nearest(x, centers[j : j + 1])[1])

    bar = progress_bar(range(max_iter), desc=f"k-means k={k} (torch)")
    for _ in bar:
        ids, _ = _chunked_nearest(x, centers)
        sums = torch.zeros_like(centers).index_add_(0, ids, x)
        counts = torch.bincount(ids, minlength=k).to(x.dtype)
        # An empty cluster keeps its old centre rather than collapsing to zero.
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centers)
        shift = (new - centers).abs().max().item()
        centers = new
        bar.set_postfix(shift=f"{shift:.2e}")
        if shift < 1e-6:
            break
    bar.close()
    return centers.cpu().numpy()
