"""What result tables call models and controls: one home for the names.

A model is called by its label, its name and the first 8 hex of its weights' hash
(``fmnist-ar-1a2b3c4d``, :attr:`igpt_eval.ModelSource.label`); its random-weights twin by the
label and :data:`RANDOM_SUFFIX`; the pixel controls by :data:`PIXELS` and
:data:`PIXELS_NATIVE`. Re-exported by :mod:`igpt_eval.results`.
"""

from __future__ import annotations

import re

#: Model and probe name of the raw-pixel baseline rows (the palette-quantised image the
#: models read, at their resolution).
PIXELS = "pixels"
#: Model and probe name of the native-resolution raw-pixel control (the dataset's own
#: pixels, not quantised or resized).
PIXELS_NATIVE = "pixels_native"
#: The pixel controls: shared by every model of a results table, one "layer" each.
PIXEL_CONTROLS = (PIXELS, PIXELS_NATIVE)
#: Probe name of the multi-layer probe (the layers around the best one, concatenated).
CONCAT = "lbfgs_concat"
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
