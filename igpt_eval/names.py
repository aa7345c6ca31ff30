"""What result tables call models and controls: one home for the names.

A model is called by its label, its name and the first 8 hex of its weights' hash
(``fmnist-ar-1a2b3c4d``, :attr:`igpt_eval.ModelSource.label`); its random-weights twin by the
label and :data:`RANDOM_SUFFIX`; the pixel controls by :data:`PIXELS` and
:data:`PIXELS_NATIVE`. What a row's model is (:class:`ModelKind`), which probe measured it
(:class:`Probe`), what it measured (:class:`Metric`) and which paired contrast a difference
row is (:class:`Contrast`) are string enums: they compare equal to the strings results files
hold.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Probe(StrEnum):
    """The ``probe`` column: what measured a row."""

    LBFGS = "lbfgs"  # the L-BFGS linear probe, C chosen on validation
    SGD = "sgd"  # the streaming SGD linear probe
    KNN = "knn"  # DINO's weighted kNN
    CONCAT = "lbfgs_concat"  # L-BFGS on the layers around the best, concatenated
    PIXELS = "pixels"  # L-BFGS on the palette-quantised image
    PIXELS_NATIVE = "pixels_native"  # L-BFGS on the dataset's own pixels
    FINETUNE = "finetune"  # the fine-tuned network's classifier


class Metric(StrEnum):
    """The ``metric`` column: what a row's ``value`` is."""

    ACCURACY = "accuracy"  # the fraction of images classified right (CI: bootstrap)
    LOSS = "loss"  # mean cross-entropy, nats
    DIFF = "accuracy_diff"  # a paired difference of two accuracies (:class:`Contrast`)


#: The ``split`` column: where a row was scored.
SPLITS = ("train", "val", "test")


class Contrast(StrEnum):
    """The ``contrast`` column of a paired-difference row: which two predictors, on the same
    test images (:mod:`igpt_eval.probes.paired`)."""

    BEST_VS_LAST = "best_vs_last"  # the layer chosen on validation − the last layer
    BEST_VS_PIXELS = "best_vs_pixels"  # − the palette-quantised pixels
    BEST_VS_PIXELS_NATIVE = "best_vs_pixels_native"  # − the native pixels
    BEST_VS_RANDOM = "best_vs_random"  # − the random-weights twin's best layer
    CONCAT_VS_BEST = "concat_vs_best"  # the multi-layer probe − the best single layer
    BEST_VS_BEST = "best_vs_best"  # one model's best layer − another's


class ModelKind(StrEnum):
    """The ``model_kind`` column: what a row's model is."""

    TRAINED = "trained"  # a model as trained (or loaded)
    RANDOM = "random"  # a model's random-weights twin: the same architecture, untrained
    CONTROL = "control"  # no network: raw pixels


#: Model and probe name of the raw-pixel baseline rows (the palette-quantised image the
#: models read, at their resolution).
PIXELS = "pixels"
#: Model and probe name of the native-resolution raw-pixel control (the dataset's own
#: pixels, not quantised or resized).
PIXELS_NATIVE = "pixels_native"
#: Model name of the low-data study's pixel baseline (pixels scaled to [0, 1]).
RAW_PIXELS = "raw pixels"
#: The pixel controls: shared by every model of a results table, one "layer" each.
PIXEL_CONTROLS = (PIXELS, PIXELS_NATIVE)
#: Probe name of the multi-layer probe (the layers around the best one, concatenated).
CONCAT = Probe.CONCAT
#: What a model's random-weights twin adds to its name (:func:`random_twin`).
RANDOM_SUFFIX = " (random weights)"


def random_twin(model: str) -> str:
    """The model name of ``model``'s random-weights control: ``"fmnist-ar-1a2b3c4d (random
    weights)"`` (the same architecture at its initialisation, probed alike)."""
    return model + RANDOM_SUFFIX


_LABEL_HASH = re.compile(r"-[0-9a-f]{8}$")


def bare_name(label: str) -> str:
    """A model label without its weights hash: ``"fmnist-ar-1a2b3c4d (random weights)"``
    → ``"fmnist-ar (random weights)"`` (labels: :attr:`igpt_eval.ModelSource.label`)."""
    trained = trained_of(label)
    base = _LABEL_HASH.sub("", label if trained is None else trained)
    return base if trained is None else random_twin(base)


def trained_of(name: str) -> str | None:
    """The model a random-weights twin stands for (``None`` when ``name`` is no twin)."""
    return name.removesuffix(RANDOM_SUFFIX) if name.endswith(RANDOM_SUFFIX) else None


def model_names(names) -> list[str]:
    """The names among ``names`` (in order, once each) that are models rather than
    controls: not a pixel control, and not the random-weights twin of another name there
    (a twin probed alone, as ``igpt-eval probe --random-weights`` does, is the model)."""
    names = list(dict.fromkeys(names))
    return [n for n in names if n not in PIXEL_CONTROLS and trained_of(n) not in names]


def model_kind(name: str) -> ModelKind:
    """The kind of the model named ``name`` in a results table: what files written before
    the ``model_kind`` column are read with (:func:`igpt_eval.results.load_results`), and
    the default for rows that do not say."""
    if name in PIXEL_CONTROLS or name == RAW_PIXELS:
        return ModelKind.CONTROL
    return ModelKind.RANDOM if trained_of(name) is not None else ModelKind.TRAINED
