"""The results format: typed columns (model_kind, format_version), enums that read as the
strings files hold, and files of other versions read through one converter or refused."""

from __future__ import annotations

import pandas as pd
import pytest

from igpt_eval.errors import IGPTError
from igpt_eval.names import Contrast, ModelKind, Probe, model_kind, random_twin
from igpt_eval.results import COLUMNS, FORMAT_VERSION, load_results, save_results, to_frame


def _rows():
    base = dict(split="test", layer=0, site="ln_f", metric="accuracy", value=0.5)
    return [
        dict(base, model="m-1a2b3c4d", probe=Probe.LBFGS),
        dict(base, model=random_twin("m-1a2b3c4d"), probe=Probe.LBFGS),
        dict(base, model="pixels", probe=Probe.PIXELS),
        dict(base, model="raw pixels", probe=Probe.LBFGS),
    ]


def test_enums_are_the_strings_in_the_files():
    assert Probe.LBFGS == "lbfgs" and Contrast.BEST_VS_LAST == "best_vs_last"
    assert Contrast("best_vs_pixels_native") is Contrast.BEST_VS_PIXELS_NATIVE
    with pytest.raises(ValueError):
        Contrast("best_vs_everything")


def test_rows_get_their_kind_and_the_format_version():
    df = to_frame(_rows())
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert list(df.model_kind) == ["trained", "random", "control", "control"]
    assert (df.format_version == FORMAT_VERSION).all()
    # A kind a row gives is kept, not re-derived from the name.
    mine = to_frame([dict(_rows()[0], model_kind=ModelKind.RANDOM)])
    assert mine.model_kind.iloc[0] == "random"
    assert model_kind("x (random weights)") is ModelKind.RANDOM


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_version_1_file_is_read_through_the_converter(tmp_path, suffix):
    """Files written before model_kind and format_version (and p_value) existed."""
    old = to_frame(_rows()).drop(columns=["model_kind", "format_version", "p_value"])
    path = tmp_path / f"results{suffix}"
    old.to_parquet(path) if suffix == ".parquet" else old.to_csv(path, index=False)
    df = load_results(path)
    assert list(df.model_kind) == ["trained", "random", "control", "control"]
    assert (df.format_version == FORMAT_VERSION).all() and df.p_value.isna().all()
    assert list(df.value) == [0.5] * 4  # numbers untouched


def test_a_newer_format_is_refused_in_one_line(tmp_path):
    save_results(to_frame(_rows()).assign(format_version=FORMAT_VERSION + 1), tmp_path)
    with pytest.raises(IGPTError, match=f"results format {FORMAT_VERSION + 1}, newer"):
        load_results(tmp_path / "results.parquet")


def test_a_current_file_round_trips(tmp_path):
    df = to_frame(_rows())
    save_results(df, tmp_path)
    back = load_results(tmp_path / "results.parquet")
    cols = ["model", "model_kind", "split", "probe", "metric", "value", "format_version"]
    pd.testing.assert_frame_equal(back[cols], df[cols], check_dtype=False)


def test_row_constructor_refuses_unknown_columns_and_kinds():
    """A result row is made by :func:`results.row`: bases merged left to right, then the
    fields; a column or kind this format does not know fails where the row is made."""
    from igpt_eval.names import Metric, Probe
    from igpt_eval.results import row

    base = row(model="m", probe=Probe.LBFGS, split="test", layer=3)
    r = row(base, {"layer": 4}, metric=Metric.ACCURACY, value=0.5, k=20)
    assert r == dict(model="m", probe="lbfgs", split="test", layer=4, metric="accuracy",
                     value=0.5, k=20)  # fmt: skip
    assert base["layer"] == 3  # the bases are not changed
    with pytest.raises(ValueError, match="not a results column: vlaue"):
        row(base, vlaue=0.5)
    with pytest.raises(ValueError, match="'acc' is not a metric"):
        row(base, metric="acc")
    with pytest.raises(ValueError, match="'validation' is not a split"):
        row(base, split="validation")
    with pytest.raises(ValueError, match="is not a probe"):
        row(probe="logreg")
