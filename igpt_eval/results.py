"""Tidy results tables: one row per (model, split, layer, probe, hyper-parameter, metric),
and the names of models and controls in them.

Every probe and analysis writes rows with the same columns, saved as parquet and CSV side by
side; every figure and table in ``reports/`` is drawn from these files only. A model is
named by its label (:attr:`igpt_eval.ModelSource.label`: name and weights hash); its
controls by the names in :mod:`igpt_eval.names`. Rows carry no arrays: the per-example
test predictions kept beside them (differences are judged on the same test images) are
:mod:`igpt_eval.predictions`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write
from igpt_eval.names import (
    CONCAT,
    PIXEL_CONTROLS,
    SPLITS,
    Metric,
    Probe,
    bare_name,
    model_kind,
)
from igpt_eval.predictions import (
    Predictions,
    save_predictions,
)

#: The version of the results format this igpt-eval writes, in every row's
#: ``format_version``. 2: the ``model_kind`` and ``format_version`` columns; 1: files
#: written before them, read through :func:`upgrade` (the kind from the model's name).
FORMAT_VERSION = 2

#: The columns of a results table (docs/design.md), in order; ``site`` holds the site name
#: (``blocks.3.ln_1``), ``model_kind`` a :class:`~igpt_eval.names.ModelKind`.
COLUMNS = [
    "model",
    "model_kind",
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
    "format_version",
]
#: Standard columns that results files written by earlier versions lack, filled by
#: :func:`upgrade` (``p_value`` with NaN: files from before paired statistics).
ADDED_COLUMNS = ["p_value", "model_kind", "format_version"]
#: The columns paired-difference rows (``metric = "accuracy_diff"``, see
#: :mod:`igpt_eval.probes.paired`) add: which contrast, the other side, the discordant counts.
DIFF_COLUMNS = ["contrast", "vs_model", "vs_probe", "vs_layer", "vs_site", "n01", "n10"]
#: Columns a study adds to its own rows: kNN's neighbours and temperature; a fine-tune's
#: objective, augmentation and steps; the low-data study's labels per class, method, chosen
#: layer and time; the training-dynamics study's run, step, validation loss and tokens seen.
STUDY_COLUMNS = [
    "k",
    "temperature",
    "finetune_objective",
    "augment",
    "steps",
    "labels_per_class",
    "method",
    "best_layer",
    "study_seconds",
    "run",
    "step",
    "val_loss",
    "tokens_seen",
]
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


_KNOWN = {*COLUMNS, *EXTRA, *STUDY_COLUMNS}
_KINDS = {"probe": set(Probe), "metric": set(Metric), "split": set(SPLITS)}


def row(*bases: dict, **fields) -> dict:
    """One result row: ``bases`` merged left to right, then ``fields``. Every column must be
    one this format knows (:data:`COLUMNS`, :data:`EXTRA`, :data:`STUDY_COLUMNS`) and its
    ``probe``, ``metric`` and ``split`` one of their kinds (:class:`~igpt_eval.names.Probe`,
    :class:`~igpt_eval.names.Metric`, :data:`~igpt_eval.names.SPLITS`): a misspelt column
    or kind fails where the row is made, not as an empty column in a report."""
    r: dict = {}
    for base in bases:
        r.update(base)
    r.update(fields)
    unknown = set(r) - _KNOWN
    if unknown:
        raise ValueError(f"not a results column: {', '.join(sorted(unknown))}")
    for column, kinds in _KINDS.items():
        if r.get(column) is not None and r[column] not in kinds:
            raise ValueError(f"{r[column]!r} is not a {column} ({', '.join(sorted(kinds))})")
    return r


def to_frame(rows: list[dict]) -> pd.DataFrame:
    """A results DataFrame with the standard columns first (missing ones filled with NA;
    a row that gives no ``model_kind`` gets its model name's, :func:`~igpt_eval.names.model_kind`)
    and this version's ``format_version``."""
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df:
            df[c] = pd.NA
    missing = df.model_kind.isna() & df.model.notna()
    if missing.any():
        df["model_kind"] = df.model_kind.astype(object)
        df.loc[missing, "model_kind"] = [str(model_kind(m)) for m in df.model[missing]]
    df["format_version"] = FORMAT_VERSION
    rest = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + rest]


def upgrade(df: pd.DataFrame, where: str | Path = "the results") -> pd.DataFrame:
    """A results table read from disk in this version's format: one written by a newer
    igpt-eval is refused (one clear error); an older one gets the columns it lacks."""
    version = 1
    if "format_version" in df and df.format_version.notna().any():
        version = int(df.format_version.dropna().max())
    if version > FORMAT_VERSION:
        raise IGPTError(
            f"{where} is in results format {version}, newer than this igpt-eval reads "
            f"({FORMAT_VERSION}); upgrade igpt-eval to read it"
        )
    if version == FORMAT_VERSION:
        return df
    return to_frame(df.assign(p_value=df.get("p_value", np.nan)))


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
    return upgrade(df, path)


# --------------------------------------------------------------------------- side files
#: Beside a results table: each model's name → where its folder is (``path``) and how it was
#: named (``model``), so a report finds the model's training log and palette.
MODELS_FILE = "models.json"


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


def probe_init(
    df: pd.DataFrame, model: str, weights_hash: str | None = None, layer: int | None = None
) -> tuple[int, float, int | None]:
    """``(layer, C, n)`` a fine-tune's head starts from (``FinetuneConfig``'s ``layer``,
    ``init_C``, ``init_n``): :func:`probe_choice`, and the size of the probe's training
    sample at that layer (``None`` where the file does not record it; C multiplies a sum
    over that many examples)."""
    layer, C = probe_choice(df, model, weights_hash, layer)
    rows = df[(df.model == model) & (df.layer == layer) & (df.split == "val")]
    if "probe" in rows:
        rows = rows[rows.probe == "lbfgs"]
    n = rows.n_train.dropna() if "n_train" in rows else rows[:0]
    return layer, C, int(n.iloc[0]) if len(n) else None
