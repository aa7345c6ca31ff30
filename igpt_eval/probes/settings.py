"""What :func:`igpt_eval.probes.runner.probe_model` does to a model: :class:`ProbeSettings`.

The protocol, extraction and sample settings of one probe run, with their defaults and the
reasons for them, in one object that ``igpt-eval probe``, ``compare`` and ``track`` build and
hand on; where files are read and written (data, caches, results) stays with the call.
Light (no torch, no numpy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from igpt_eval.defaults import (
    BERT_MASKS,
    PROBE_FEATURE_BYTES,
    SAMPLE_TEST,
    SAMPLE_TRAIN,
    SAMPLE_VAL,
)
from igpt_eval.errors import IGPTError

METHODS = ("lbfgs", "sgd")


@dataclass(frozen=True)
class ProbeSettings:
    """How a model is probed: which features, which probe, on which sample of each split.

    ``ProbeSettings(method="sgd")``, or ``settings.replace(test_size=None)`` for a copy
    with some fields changed; :func:`~igpt_eval.probes.runner.probe_model` takes the same
    fields as keyword arguments too.
    """

    # --- the features
    layers: tuple[int, ...] | None = None  # None: every layer of the model (0..n_layer)
    site: str = "ln_1"  # the paper's site: block input after its first norm (docs/design.md)
    bert_masks: int = BERT_MASKS  # independent masks averaged per image (BERT models only)
    batch_size: int | None = None  # images per forward; None: the device's (model.devices)
    compute: str = "auto"  # bf16 autocast on a GPU; float32 (exact, same everywhere) on CPU
    cache_dtype: str = "float32"  # stored features; float16 halves the disk at iGPT-M/L size
    # --- the probe
    method: str = "lbfgs"  # lbfgs: full batch, C chosen on val; sgd: streamed from the cache
    backend: str = "torch"  # L-BFGS solver: torch (batched, GPU-able), sklearn or cuml
    device: str = "auto"  # where extraction and probes run: auto (CUDA when present), cpu, cuda
    standardize: bool = True  # train statistics: standardise (L-BFGS) or whiten (SGD)
    seed: int = 0  # BERT masks, probes, bootstrap intervals (the split is the run's)
    max_feature_bytes: int = PROBE_FEATURE_BYTES  # L-BFGS holds this much at once (groups)
    # --- the sample: a stratified one per split (None: all of it), the main job's budget
    train_size: int | None = SAMPLE_TRAIN
    val_size: int | None = SAMPLE_VAL
    test_size: int | None = SAMPLE_TEST
    # --- controls and extra probes (docs/design.md, "Probes")
    pixels: bool = True  # the raw-pixel baseline (palette-quantised), same splits and sample
    native_pixels: bool = True  # and the dataset's own pixels at native resolution: the
    # stronger control (Fashion-MNIST: 784 grey values, not 256 palette indices), for seconds
    random_weights: bool = False  # probe the model's random-weights twin instead of the model
    concat_layers: int | None = None  # K (odd): the K layers around the best, concatenated

    def __post_init__(self):
        if self.method not in METHODS:
            raise IGPTError(f"unknown probe method {self.method!r}; use lbfgs or sgd")
        if self.layers is not None:  # a list from a caller, kept hashable and unshared
            object.__setattr__(self, "layers", tuple(self.layers))

    def replace(self, **changes) -> ProbeSettings:
        """A copy with ``changes`` (field names as keywords); a name that is no field is a
        :class:`TypeError`, as for a misspelt keyword argument."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"no probe setting named {unknown[0]!r}")
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def sizes(self) -> dict[str, int | None]:
        """The sample size of each split (``None``: the whole split)."""
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}
