"""Per-example test predictions: what paired statistics are computed from.

They live in memory as a :class:`Predictions` (the test labels once, and one small integer
array of predicted labels per probed layer) and on disk as ``predictions.npz`` beside a
results table (:mod:`igpt_eval.results`): an array ``labels`` and one array per probe, named
``{model}/{probe}/{site}`` (:func:`prediction_key`), e.g.
``fmnist-ar-6c94f7b1/lbfgs/blocks.4.ln_1``, ``pixels/pixels/pixels``,
``fmnist-ar-6c94f7b1 (random weights)/lbfgs/ln_f`` (a random-weights twin) or
``fmnist-ar-6c94f7b1/lbfgs_concat/concat(blocks.2.ln_1..blocks.6.ln_1)`` (the multi-layer
probe); the ``model``, ``probe`` and ``site`` columns of a test row name its array. Results
written before predictions were kept have no such file: :func:`load_predictions` returns
``None`` for them. Every probe returns its rows with the predictions behind them, as a
:class:`Scored`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.names import bare_name

PREDICTIONS_FILE = "predictions.npz"


class Scored(NamedTuple):
    """What every probe returns: its tidy result rows (:mod:`igpt_eval.results`) and the
    per-example test predictions behind them (one array per layer probed), so paired
    statistics can be computed later. Unpacks as ``rows, predictions = probe(...)``."""

    rows: list[dict]
    predictions: Predictions


def _site_layer(site: str) -> int | None:
    """The layer number in a site name (``blocks.3.ln_1`` → 3); ``None`` for ``ln_f`` and
    names without one (the last layer is asked for by its site name or its number, which
    only the results table knows)."""
    parts = site.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def prediction_key(model: str, probe: str, site: str) -> str:
    """The name of one probe's test predictions: ``{model}/{probe}/{site}``."""
    return f"{model}/{probe}/{site}"


def _compact(a: np.ndarray) -> np.ndarray:
    """Integer labels in the smallest of uint8 / int16 that holds them (else as they are)."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu" or a.size == 0:
        return a
    for dt in (np.uint8, np.int16):
        info = np.iinfo(dt)
        if info.min <= a.min() and a.max() <= info.max:
            return a.astype(dt)
    return a


@dataclass
class Predictions:
    """Per-example test predictions of probes that share one test split.

    ``labels`` (N,) holds the test labels once; ``pred`` maps :func:`prediction_key` names
    to (N,) predicted labels (the same label values as ``labels``). Both are stored as
    small integers (uint8 for up to 256 classes)."""

    labels: np.ndarray | None = None
    pred: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, key: str, pred, labels) -> None:
        """Record ``pred`` under ``key``; ``labels`` must be the test labels already held
        (the same images in the same order), or become them when none are yet."""
        pred, labels = _compact(pred), _compact(labels)
        if pred.shape != labels.shape or pred.ndim != 1:
            raise IGPTError(f"{key}: {pred.shape} predictions for {labels.shape} labels")
        if self.labels is None:
            self.labels = labels
        elif not np.array_equal(self.labels, labels):
            raise IGPTError(
                f"{key} was tested on other images than the predictions already held; "
                "paired statistics need one test split"
            )
        self.pred[key] = pred

    def update(self, other: Predictions | None) -> Predictions:
        """Add every array of ``other`` (same test labels); returns self."""
        if other is not None:
            for key, p in other.pred.items():
                self.add(key, p, other.labels)
        return self

    def key(self, model: str, probe: str, layer: int | str) -> str:
        """The name of ``model``'s ``probe`` predictions at ``layer`` (a layer number, or a
        site name such as ``ln_f``); a miss is one :class:`IGPTError` listing what is held.
        ``model`` is a label as the results table has it (``fmnist-ar-1a2b3c4d``), or the
        bare name (``fmnist-ar``) when only one model of that name is held."""
        model = self._model(model)
        want = f"{model}/{probe}/"
        sites = {k[len(want) :]: k for k in self.pred if k.startswith(want)}
        blocks = sorted(n for n in map(_site_layer, sites) if n is not None)
        for site, key in sites.items():
            if site == str(layer) or _site_layer(site) == layer:
                return key
            # The final norm is layer n_layer: one past the blocks, when all of them are held.
            if site == "ln_f" and blocks == list(range(len(blocks))) and layer == len(blocks):
                return key
        raise IGPTError(
            f"no test predictions of {model!r}, probe {probe!r}, layer {layer!r}; held: "
            + ", ".join(sorted(self.pred))
        )

    @property
    def models(self) -> list[str]:
        """The models (and controls) whose test predictions are held."""
        return sorted({k.split("/")[0] for k in self.pred})

    def _model(self, model: str) -> str:
        held = self.models
        if model in held:
            return model
        like = [m for m in held if bare_name(m) == model]
        return like[0] if len(like) == 1 else model

    def get(self, model: str, probe: str, layer: int | str) -> np.ndarray:
        """The predicted test labels (N,) of ``model``'s ``probe`` at ``layer``."""
        return self.pred[self.key(model, probe, layer)]

    def correct(self, key: str) -> np.ndarray:
        """Per-example correctness (N,) bool of the predictions named ``key``."""
        if key not in self.pred:
            raise IGPTError(
                f"no test predictions named {key!r}; held: {', '.join(sorted(self.pred))}"
            )
        return self.pred[key] == self.labels

    def __contains__(self, key: str) -> bool:
        return key in self.pred

    def __len__(self) -> int:
        return len(self.pred)


def save_predictions(predictions: Predictions, out_dir: str | Path) -> Path:
    """Write ``predictions.npz`` (``labels`` plus one array per key) into ``out_dir``."""
    out = Path(out_dir) / PREDICTIONS_FILE
    arrays = dict(predictions.pred)
    if predictions.labels is not None:
        arrays["labels"] = predictions.labels
    with atomic_write(out) as f:
        np.savez_compressed(f, **arrays)
    return out


def load_predictions(path: str | Path) -> Predictions | None:
    """The :class:`Predictions` of a results folder (or a ``predictions.npz``); ``None``
    when there is none (results written before predictions were kept)."""
    path = Path(path)
    f = path / PREDICTIONS_FILE if path.is_dir() else path
    if not f.is_file():
        return None
    try:
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        raise IGPTError(f"{f} is not a readable predictions file ({e})") from None
    if "labels" not in arrays:
        raise IGPTError(f"{f} holds no test labels")
    labels = arrays.pop("labels")
    return Predictions(labels, arrays)
