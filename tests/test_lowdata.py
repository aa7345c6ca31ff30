"""``igpt-eval lowdata`` on a tiny model: rows, mean ± std, table, figure, reuse, bad input."""

import numpy as np
import pandas as pd
import pytest

from igpt_eval.cli import main
from igpt_eval.data.palette import Palette
from igpt_eval.model import save_model
from igpt_eval.model.sources import resolve_model
from igpt_eval.reporting.lowdata import lowdata_figure, lowdata_summary, lowdata_table
from igpt_eval.results import COLUMNS, load_results
from tests.test_finetune import one_error, pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny_models(tmp_path):
    pal = Palette(np.random.default_rng(0).uniform(-1, 1, (16, 3)).astype(np.float32))
    return [save_model(pretrained(o), tmp_path / f"tiny-{o}", palette=pal) for o in ("ar", "bert")]


def ld_args(tmp_path, models, dataset, *extra, out="ld"):
    args = ["lowdata", "--dataset", dataset, "--out", str(tmp_path / out), "--k", "2", "4",
            "--seeds", "2", "--min-steps", "4", "--max-steps", "4", "--eval-every", "2",
            "--batch-size", "8",
            "--test-images", "0", "--cache", str(tmp_path / "cache"), "--no-progress"]  # fmt: skip
    args += extra
    for m in models:
        args += ["--model", str(m)]
    return args


def test_lowdata_end_to_end(tmp_path, tiny_models, tiny_npz, capsys):
    AR, BERT = (resolve_model(m).label for m in tiny_models)
    assert main(ld_args(tmp_path, tiny_models, f"npz:{tiny_npz}")) == 0
    out = capsys.readouterr().out
    assert f"| linear probe ({AR}) |" in out and "±" in out
    df = load_results(tmp_path / "ld/results.parquet")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    t = df[(df.split == "test") & (df.metric == "accuracy")]
    counts = t.groupby(["method", "model"]).size().to_dict()
    assert counts == {
        ("fine-tune", AR): 4, ("fine-tune", BERT): 4,
        ("linear probe", AR): 4, ("linear probe", BERT): 4,
        ("raw pixels", "raw pixels"): 4,
    }  # fmt: skip
    assert set(t.labels_per_class) == {2, 4} and set(t.seed) == {0, 1}
    assert (t.n_eval == 12).all()  # every method on the same (here: whole) test set
    probe = t[t.method == "linear probe"]
    assert (probe.n_train == 3 * probe.labels_per_class).all()  # refit on all K labels
    s = lowdata_summary(df)
    assert len(s) == 10 and (s.n == 2).all() and (s["std"] >= 0).all()
    one = t[(t.method == "fine-tune") & (t.model == AR) & (t.labels_per_class == 4)]
    row = s[(s.method == "fine-tune") & (s.model == AR) & (s.labels_per_class == 4)]
    assert row["mean"].item() == pytest.approx(one.value.mean())
    assert row["std"].item() == pytest.approx(one.value.std())
    assert (tmp_path / "ld/lowdata.md").read_text().startswith("| method | K=2 | K=4 |")
    assert (tmp_path / "ld/lowdata.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "ld/lowdata.svg").is_file()
    assert not list((tmp_path / "ld/finetune").glob("*/*/model.safetensors"))  # not kept
    # The same command again continues: finished fine-tuning runs are read back.
    assert main(ld_args(tmp_path, tiny_models, f"npz:{tiny_npz}")) == 0
    again = load_results(tmp_path / "ld/results.parquet")
    pd.testing.assert_series_equal(again.value, df.value)


def test_more_seeds_extend_a_study_and_other_settings_are_refused(
    tmp_path, tiny_models, tiny_npz, capsys
):
    def args(*extra):
        a = ld_args(tmp_path, tiny_models[:1], f"npz:{tiny_npz}", *extra)
        return [*a[: a.index("--seeds")], *a[a.index("--seeds") + 2 :]]

    assert main(args("--seeds", "1")) == 0
    one = load_results(tmp_path / "ld/results.parquet")
    logs = sorted(
        (tmp_path / "ld/finetune" / resolve_model(tiny_models[0]).label).glob("*/finetune_log.csv")
    )
    stamps = {p: p.stat().st_mtime_ns for p in logs}
    assert main(args("--seeds", "2")) == 0
    two = load_results(tmp_path / "ld/results.parquet")
    assert set(one.seed) == {0} and set(two.seed) == {0, 1}
    ft = ["method", "labels_per_class", "seed", "split", "metric"]
    seed0 = two[(two.seed == 0) & (two.method == "fine-tune")].sort_values(ft)
    first = one[one.method == "fine-tune"].sort_values(ft)
    np.testing.assert_array_equal(seed0.value.to_numpy(), first.value.to_numpy())
    assert {p: p.stat().st_mtime_ns for p in logs} == stamps  # read back, not run again
    capsys.readouterr()
    assert main(args("--seeds", "2", "--lr", "0.01")) == 2
    assert "other settings" in one_error(capsys)
    assert set(load_results(tmp_path / "ld/results.parquet").seed) == {0, 1}  # untouched


def test_full_split_caches_are_reused(tmp_path, tiny_models, tiny_npz, monkeypatch):
    from igpt_eval.cache import ExtractSettings, extract
    from igpt_eval.data import DataSource

    cache = tmp_path / "cache"
    for split in ("train", "test"):
        extract(tiny_models[0], DataSource(f"npz:{tiny_npz}", token_cache=tmp_path / "tok"),
                split=split, out=cache / "activations" / f"full-{split}",
                settings=ExtractSettings(bert_masks=0))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    args = ld_args(tmp_path, tiny_models[:1], f"npz:{tiny_npz}", "--no-finetune",
                   "--token-cache", str(tmp_path / "tok"))  # fmt: skip
    assert main(args) == 0
    made = sorted(p.name for p in (cache / "activations").iterdir())
    assert made == ["full-test", "full-train"]  # rows indexed, nothing extracted again


def test_report_functions_on_a_results_frame(tmp_path):
    rows = []
    for method, model in [("linear probe", "ar"), ("fine-tune", "ar"), ("raw pixels", "px")]:
        for k in (4, 25):
            for seed in range(3):
                rows.append(dict(method=method, model=model, labels_per_class=k, seed=seed,
                                 split="test", metric="accuracy", layer=5,
                                 value=0.5 + 0.01 * k + 0.01 * seed))  # fmt: skip
    df = pd.DataFrame(rows)
    table = lowdata_table(df)
    assert "| linear probe (ar) | 55.0 ± 1.0 (l5) | 76.0 ± 1.0 (l5) |" in table
    assert "| raw pixels | 55.0 ± 1.0 | 76.0 ± 1.0 |" in table
    assert "- fine-tune (ar): rises with K (55.0 < 76.0)" in table
    worse = df.assign(value=np.where(df.labels_per_class == 25, 0.4, df.value))
    assert "- fine-tune (ar): **does not rise with K**: K=25 40.0 ≤ K=4 55.0" in lowdata_table(
        worse
    )
    from igpt_eval.reporting.figures import save_figure

    files = save_figure(lowdata_figure(df), tmp_path / "fig")
    assert [f.suffix for f in files] == [".png", ".svg"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--k", "19"], "class 0 has only 18"),
        (["--layer", "7"], "layer 7 is out of range"),
        (["--k", "1"], "every K must be >= 2"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_models, tiny_npz, capsys,
                                                  extra, match):  # fmt: skip
    assert main(ld_args(tmp_path, tiny_models, f"npz:{tiny_npz}", *extra)) == 2
    assert match in one_error(capsys)
    assert not (tmp_path / "ld").exists()


def test_unlabelled_data_and_foreign_out(tmp_path, tiny_models, tiny_npz, capsys):
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((20, 8, 8, 3), np.uint8))
    assert main(ld_args(tmp_path, tiny_models, f"npz:{tmp_path / 'nolabels.npz'}")) == 2
    assert "labels" in one_error(capsys)
    assert not (tmp_path / "ld").exists()
    (tmp_path / "ld").mkdir()
    (tmp_path / "ld/notes.txt").write_text("mine")
    assert main(ld_args(tmp_path, tiny_models, f"npz:{tiny_npz}")) == 2
    assert "already holds files" in one_error(capsys)
    assert sorted(p.name for p in (tmp_path / "ld").iterdir()) == ["notes.txt"]


def test_caches_made_with_other_settings_are_not_reused(tmp_path, tiny_models, tiny_npz,
                                                       monkeypatch):  # fmt: skip
    """Same model, same split, but stored in float16: not what the study extracts with."""
    from igpt_eval.cache import ExtractSettings, extract
    from igpt_eval.data import DataSource

    cache = tmp_path / "cache"
    for split in ("train", "test"):
        extract(tiny_models[0], DataSource(f"npz:{tiny_npz}", token_cache=tmp_path / "tok"),
                split=split, out=cache / "activations" / f"half-{split}",
                settings=ExtractSettings(bert_masks=0, dtype="float16"))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    args = ld_args(tmp_path, tiny_models[:1], f"npz:{tiny_npz}", "--no-finetune",
                   "--token-cache", str(tmp_path / "tok"))  # fmt: skip
    assert main(args) == 0
    made = sorted(p.name for p in (cache / "activations").iterdir())
    assert made[:2] == ["half-test", "half-train"] and len(made) == 4
    assert all(m.startswith("lowdata-") for m in made[2:])  # its own, in float32


def test_best_layer_from_full_data_probe_results(tmp_path, tiny_models, tiny_npz, monkeypatch,
                                                 capsys):  # fmt: skip
    from igpt_eval.studies.probe import summary

    monkeypatch.chdir(tmp_path)
    probe = ["probe", "--model", str(tiny_models[0]), "--dataset", f"npz:{tiny_npz}",
             "--cache", str(tmp_path / "acts"), "--out", str(tmp_path / "probe")]  # fmt: skip
    probe.append("--no-progress")
    assert main(probe) == 0
    s = summary(load_results(tmp_path / "probe/results.parquet"))
    best = int(s[s.best].layer.iloc[0])
    results = ["--probe-results", str(tmp_path / "probe/results.parquet")]
    assert (
        main(ld_args(tmp_path, tiny_models[:1], f"npz:{tiny_npz}", "--no-finetune", *results)) == 0
    )
    df = load_results(tmp_path / "ld/results.parquet")
    assert set(df[df.method == "linear probe"].layer) == {best}
    # A model the results do not cover: one clear error, nothing written.
    assert main(ld_args(tmp_path, tiny_models[1:], f"npz:{tiny_npz}", *results, out="ld2")) == 2
    assert f"no L-BFGS rows for model '{resolve_model(tiny_models[1]).label}'" in one_error(capsys)
    assert not (tmp_path / "ld2").exists()


def test_finetuning_budget_scales_with_the_labels():
    """More labels buy more steps (a fixed budget made K = 400 score below K = 25)."""
    from igpt_eval.studies.settings import LowDataConfig

    cfg = LowDataConfig()
    # K = 4, 25, 400 per class, a quarter held out (at most 20 per class), 10 classes.
    steps = [cfg.steps(n) for n in (30, 190, 3800)]
    assert steps == [100, 100, 1200]
    assert cfg.steps(3000) == 1125  # 3 epochs at batch 8
    assert LowDataConfig(epochs=1, min_steps=1).steps(5) == 1  # a tiny set: one full batch
    with pytest.raises(Exception, match="max steps"):
        LowDataConfig(min_steps=10, max_steps=5).validate()
