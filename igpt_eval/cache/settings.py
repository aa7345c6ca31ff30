"""What an activation cache holds and how its features are computed: :class:`ExtractSettings`.

One frozen object that :func:`~igpt_eval.cache.writer.write_cache`, the manifest
(:func:`~igpt_eval.cache.request.request`), :func:`~igpt_eval.cache.extraction.extract` and
the managed cache's folder name (:meth:`ExtractSettings.tag`) all read, so a new extraction
knob is one field here. Light (no torch): the command line reads the defaults for ``--help``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import ClassVar

from igpt_eval.defaults import BERT_MASKS, DEFAULT_SITE
from igpt_eval.settings import Settings


@dataclass(frozen=True)
class ExtractSettings(Settings):
    """The features a cache stores. Every field but ``batch_size`` is part of the cache's
    identity: a cache is reused only for the same settings (docs/design.md, "Activation
    cache")."""

    layers: tuple[int, ...] | None = None  # None: every layer of the site
    site: str = DEFAULT_SITE  # block input after its first norm, where the paper probes
    dtype: str = "float32"  # stored features; float16 halves the disk at iGPT-M/L size
    bert_masks: int = BERT_MASKS  # masks averaged per image (BERT models; AR reads unmasked)
    seed: int = 0  # the BERT masks' seed (row i's masks depend on (seed, i) only)
    full_sequence_layer: int | None = None  # also store this layer at every position
    full_sequence_dtype: str = "float16"  # [N, T, d] is T times larger: half precision
    compute: str = "auto"  # forward precision: float32, bfloat16 autocast; auto: bf16 on GPU
    batch_size: int | None = None  # images per forward; None: the device's (model.devices)
    KIND: ClassVar[str] = "extraction"

    def __post_init__(self):
        if self.layers is not None:  # a list from a caller, kept hashable and unshared
            object.__setattr__(self, "layers", tuple(self.layers))

    def tag(self, rows: int | None = None) -> str:
        """The short hash that names a managed cache folder: of every field but the batch
        size (it does not change what is stored), the layers sorted, and with ``rows`` the
        size of a stratified sample. The same features asked for with or without a default
        spelt out (``extract()``, ``probe``) share one folder."""
        full = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        full.pop("batch_size")
        if full["layers"] is not None:
            full["layers"] = sorted(set(full["layers"]))
        if rows is not None:
            full["rows"] = rows
        key = json.dumps(sorted(full.items()), default=str)
        return hashlib.sha256(key.encode()).hexdigest()[:6]
