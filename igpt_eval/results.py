"""Tidy results tables: one row per (model, split, layer, probe, hyper-parameter, metric).

Every probe and analysis writes rows with the same columns, saved as parquet and CSV side by
side; every figure and table in ``reports/`` is drawn from these files only.
"""

from __future__ import annotations

from pathlib import Path

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
    "n_iter",
    "converged",
    "seconds",
    "seed",
]
#: Extra columns some rows carry (NaN elsewhere).
EXTRA = ["site_kind", "selected", "standardize", "preprocess", "grad_norm", "n_train", "n_eval"]


def to_frame(rows: list[dict]) -> pd.DataFrame:
    """A results DataFrame with the standard columns first (missing ones filled with NA)."""
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df:
            df[c] = pd.NA
    rest = [c for c in df.columns if c not in COLUMNS]
    return df[COLUMNS + rest]


def save_results(df: pd.DataFrame, out_dir: str | Path, stem: str = "results") -> Path:
    """Write ``<stem>.parquet`` and ``<stem>.csv`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / f"{stem}.parquet") as f:
        df.to_parquet(f, index=False)
    with atomic_write(out / f"{stem}.csv", "w") as f:
        df.to_csv(f, index=False)
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
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise IGPTError(f"{path} lacks results columns {missing}")
    return df
