"""The data stage: the colour palette, a registry of on-disk formats, deterministic splits,
resizing, subsets and token caches.

Example::

    from igpt_eval.data import load_dataset, tokenize
    ds = load_dataset("fashion-mnist", split="train", n_px=28)
    cache = tokenize(ds, palette, "tokens/fmnist-train")
    cache.tokens   # uint16 memmap [N, 784]
"""

from igpt_eval.data.dataset import ImageDataset, dataset_fingerprint, load_dataset
from igpt_eval.data.formats import Source
from igpt_eval.data.palette import Palette
from igpt_eval.data.registry import list_datasets, read_source, register_dataset
from igpt_eval.data.resize import resize_images
from igpt_eval.data.source import DataSource
from igpt_eval.data.splits import SPLITS
from igpt_eval.data.tokens import (
    TokenCache,
    TokenManifest,
    cache_dir,
    load_tokens,
    read_manifest,
    tokenize,
)

__all__ = [
    "SPLITS",
    "DataSource",
    "ImageDataset",
    "Palette",
    "Source",
    "TokenCache",
    "TokenManifest",
    "cache_dir",
    "dataset_fingerprint",
    "list_datasets",
    "load_dataset",
    "load_tokens",
    "read_manifest",
    "read_source",
    "register_dataset",
    "resize_images",
    "tokenize",
]
