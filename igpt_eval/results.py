"""Tidy results tables: one row per (model, split, layer, probe, hyper-parameter, metric),
and the per-example test predictions kept beside them.

Every probe and analysis writes rows with the same columns, saved as parquet and CSV side by
side; every figure and table in ``reports/`` is drawn from these files only.

Per-example test predictions (DESIGN §5: differences are judged on the same test images)
live in memory as a :class:`Predictions` (the test labels once, and one small integer array
of predicted labels per probed layer) and on disk as ``predictions.npz`` beside
``results.parquet``: an array ``labels`` and one array per probe, named
``{model}/{probe}/{site}`` (:func:`prediction_key`), e.g. ``fmnist-ar/lbfgs/blocks.4.ln_1``,
``pixels/pixels/pixels``, ``fmnist-ar (random weights)/lbfgs/ln_f`` (a random-weights twin,
:func:`random_twin`) or ``fmnist-ar/lbfgs_concat/concat(blocks.2.ln_1..blocks.6.ln_1)`` (the
multi-layer probe); the ``model``, ``probe`` and ``site`` columns of a test row name its
array. Rows themselves carry no arrays. Results written before predictions were kept
have no such file: :func:`load_predictions` returns ``None`` for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write

#: The columns of DESIGN §5, in order; ``site`` holds the site name (``blocks.3.ln_1``).
COLUMNS = [
    "model",
    "objective",
    "dataset",
    "split",
    "layer",
    "site",
    "probe",
    "backend",
    "C",
    "lr",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "p_value",
    "n_iter",
    "converged",
    "seconds",
    "seed",
]
#: Standard columns that results files written by earlier versions lack; reading such a
#: file fills them with NaN.
ADDED_COLUMNS = ["p_value"]
#: The columns paired-difference rows (``metric = "accuracy_diff"``, see
#: :mod:`igpt_eval.probes.paired`) add: which contrast, the other side, the discordant counts.
DIFF_COLUMNS = ["contrast", "vs_model", "vs_probe", "vs_layer", "vs_site", "n01", "n10"]
#: Extra columns some rows carry (NaN elsewhere).
EXTRA = [
    "site_kind",
    "selected",
    "standardize",
    "preprocess",
    "grad_norm",
    "n_train",
    "n_eval",
    "n_features",
    "concat_layers",
    "weights_hash",
    "bert_masks",
    *DIFF_COLUMNS,
]
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
PREDICTIONS_FILE = "predictions.npz"


# --------------------------------------------------------------------------- controls
def random_twin(model: str) -> str:
    """The model name of ``model``'s random-weights control: ``"fmnist-ar-1a2b3c4d (random
    weights)"`` (the same architecture at its initialisation, probed alike)."""
    return model + RANDOM_SUFFIX


_LABEL_HASH = re.compile(r"-[0-9a-f]{8}$")


def bare_name(label: str) -> str:
    """A model label without its weights hash: ``"fmnist-ar-1a2b3c4d (random weights)"``
    → ``"fmnist-ar (random weights)"`` (labels: :attr:`igpt_eval.ModelSource.label`)."""
    base, twin = (trained_of(label), True) if trained_of(label) is not None else (label, False)
    base = _LABEL_HASH.sub("", base)
    return random_twin(base) if twin else base


def trained_of(name: str) -> str | None:
    """The model a random-weights twin stands for (``None`` when ``name`` is no twin)."""
    return name.removesuffix(RANDOM_SUFFIX) if name.endswith(RANDOM_SUFFIX) else None


def model_names(names) -> list[str]:
    """The names among ``names`` (in order, once each) that are models rather than
    controls: not a pixel control, and not the random-weights twin of another name there
    (a twin probed alone, as ``igpt-eval probe --random-weights`` does, is the model)."""
    names = list(dict.fromkeys(names))
    return [n for n in names if n not in PIXEL_CONTROLS and trained_of(n) not in names]


def to_frame(rows: list[dict]) -> pd.DataFrame:
    """A results DataFrame with the standard columns first (missing ones filled with NA)."""
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df:
            df[c] = pd.NA
    rest = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + rest]


def save_results(
    df: pd.DataFrame,
    out_dir: str | Path,
    stem: str = "results",
    predictions: Predictions | None = None,
) -> Path:
    """Write ``<stem>.parquet`` and ``<stem>.csv`` into ``out_dir`` (atomically), and the
    per-example test ``predictions`` as ``predictions.npz`` when given."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / f"{stem}.parquet") as f:
        df.to_parquet(f, index=False)
    with atomic_write(out / f"{stem}.csv", "w") as f:
        df.to_csv(f, index=False)
    if predictions is not None:
        save_predictions(predictions, out)
    return out / f"{stem}.parquet"


def load_results(path: str | Path) -> pd.DataFrame:
    """Read a results file (parquet or CSV) or folder; missing columns are one clear error."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet")) or sorted(path.glob("*.csv"))
        if not files:
            raise IGPTError(f"no results files (.parquet or .csv) in {path}")
        return pd.concat([load_results(f) for f in files], ignore_index=True)
    if not path.is_file():
        raise IGPTError(f"no results file at {path}")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        raise IGPTError(f"{path} is not a readable results file ({e})") from None
    missing = [c for c in COLUMNS if c not in df.columns and c not in ADDED_COLUMNS]
    if missing:
        raise IGPTError(f"{path} lacks results columns {missing}")
    if any(c not in df.columns for c in ADDED_COLUMNS):  # an older file: same column order
        df = to_frame(df.assign(**{c: np.nan for c in ADDED_COLUMNS if c not in df.columns}))
    return df


# --------------------------------------------------------------------------- predictions
#: Beside a results table: each model's name → where its folder is (``path``) and how it was
#: named (``model``), so a report finds the model's training log and palette.
MODELS_FILE = "models.json"


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


#: The columns of a CKA table (``cka/cka.parquet`` of a comparison): one row a layer pair.
CKA_COLUMNS = [
    "dataset",
    "split",
    "model_a",
    "layer_a",
    "site_a",
    "model_b",
    "layer_b",
    "site_b",
    "value",
    "n",
]


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


def summary(df: pd.DataFrame, probe: str | None = None) -> pd.DataFrame:
    """One row per layer: validation and test accuracy (with CI), chosen C or lr, iterations.

    ``df`` holds one model's results; ``probe`` picks one probe's rows (default: every probe
    but the raw-pixel controls and the multi-layer probe, which :func:`probe_model` adds to
    a model's results).
    ``best`` marks the layer with the highest *validation* accuracy (what a user may select
    on; among equal ones, the earliest); ``last`` the final layer.
    """
    if "probe" in df:
        others = [*PIXEL_CONTROLS, CONCAT]
        df = df[df.probe == probe] if probe is not None else df[~df.probe.isin(others)]
    acc = df[df.metric == "accuracy"]
    val = acc[(acc.split == "val") & acc.selected.astype(bool)]
    test = acc[acc.split == "test"]
    s = test[
        ["layer", "site", "value", "ci_low", "ci_high", "C", "lr", "n_iter", "converged"]
    ].rename(columns={"value": "test_acc"})
    s = s.merge(val[["layer", "value"]].rename(columns={"value": "val_acc"}), on="layer")
    s = s.sort_values("layer").reset_index(drop=True)
    if s.empty:
        raise IGPTError("no layer has both validation and test accuracy rows to summarise")
    s["best"] = s.index == s.val_acc.idxmax()  # ties: the earliest such layer, one mark only
    s["last"] = s.layer == s.layer.max()
    return s


def probe_train_size(df: pd.DataFrame, model: str) -> int:
    """How many training images ``model``'s probes in ``df`` were fitted on before the
    choice on validation (the sample, or the whole split with ``--train-size all``)."""
    val = df[(df.model == model) & (df.split == "val")]
    return int(val.n_train.iloc[0])


def probe_choice(
    df: pd.DataFrame, model: str, weights_hash: str | None = None, layer: int | None = None
) -> tuple[int, float]:
    """``(layer, C)`` of ``model``'s L-BFGS probe in a results table: the layer chosen on
    validation (or the given ``layer``) and the C chosen for it on validation. With
    ``weights_hash``, rows that record other weights are refused (one clear error), so a
    results file of another model, or of an earlier training of the same name, cannot
    initialise a classifier; files written before the hash was recorded are matched by
    name."""
    mine = df[(df.model == model) & (df.probe == "lbfgs")] if "probe" in df else df[:0]
    if mine.empty and "probe" in df:
        # The same name with another weights hash in its label: other weights.
        same = df[
            (df.probe == "lbfgs")
            & (df.model.map(bare_name, na_action="ignore") == bare_name(model))
        ]
        if len(same):
            raise IGPTError(
                f"the probe results for {bare_name(model)!r} were measured on other weights "
                f"({', '.join(sorted(set(same.model)))}, not {model}): probe this model first"
            )
    if mine.empty:
        names = sorted(set(df.model.dropna())) if "model" in df else []
        raise IGPTError(
            f"the probe results hold no L-BFGS rows for model {model!r} (they hold {names})"
        )
    if weights_hash is not None and "weights_hash" in mine:
        seen = set(mine.weights_hash.dropna())
        if seen and seen != {weights_hash}:
            raise IGPTError(
                f"the probe results for {model!r} were measured on other weights "
                f"({', '.join(sorted(seen))[:40]}, not {weights_hash[:16]}): probe this model first"
            )
    s = summary(mine)
    row = s[s.best] if layer is None else s[s.layer == layer]
    if row.empty:
        raise IGPTError(f"the probe results have no layer {layer} for model {model!r}")
    C = float(row.C.iloc[0])
    if not C > 0:
        raise IGPTError(f"the probe results record no C for layer {int(row.layer.iloc[0])}")
    return int(row.layer.iloc[0]), C
