"""``igpt-eval report``: figures and README from a comparison folder, curve shapes, bad input."""

import shutil

import numpy as np
import pandas as pd
import pytest

from igpt_eval.analysis.paired import signed_pp
from igpt_eval.cli import main
from igpt_eval.errors import IGPTError
from igpt_eval.model.sources import resolve_model
from igpt_eval.predictions import PREDICTIONS_FILE
from igpt_eval.reporting.report import build_report
from igpt_eval.reporting.words import describe_depth_curve, describe_knn


@pytest.fixture(scope="module")
def compared_dir(tiny_pair, tiny_comparison):
    """The tiny comparison folder; the AR model gets a training log and a completions
    image, the BERT one neither."""
    root, ar = tiny_pair[:2]
    steps = np.arange(1, 201)
    log = pd.DataFrame(
        dict(
            step=steps,
            train_loss=3 / np.sqrt(steps),
            val_loss=np.where(steps % 50 == 0, 2 / np.sqrt(steps), np.nan),
        )
    )
    log.to_csv(ar / "train_log.csv", index=False)
    shutil.copyfile(root / "cmp/depth_curve.png", ar / "completions.png")  # any PNG will do
    return root / "cmp"


def test_report_files_and_readme(compared_dir, tmp_path, tiny_pair):
    out = tmp_path / "reports"
    files = build_report(compared_dir, out, command="igpt-eval report")
    names = {f.name for f in files}
    for stem in (
        "depth_curves",
        "depth_curve-tiny-ar",
        "depth_curve-tiny-bert",
        "knn",
        "cka-tiny-ar",
        "cka-tiny-bert",
        "cka-tiny-ar-vs-tiny-bert",
        "training_curves",
        "palette",
    ):
        assert {f"{stem}.png", f"{stem}.svg"} <= names, stem
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "tiny-ar-completions.png").is_file()
    assert not (out / "tiny-bert-completions.png").exists()
    md = (out / "README.md").read_text()
    # The numbers in the words are the measured ones.
    table = pd.read_csv(compared_dir / "tables/comparison.csv").set_index("model")
    AR, BERT = (resolve_model(d).label for d in tiny_pair[1:3])
    for m in (AR, BERT):
        assert f"{100 * table.loc[m, 'best_acc']:.2f}%" in md
        assert signed_pp(table.loc[m, "gap_pp"] / 100) in md
        assert "McNemar p" in md and "paired" in md
    assert f"{100 * table.loc['pixels', 'best_acc']:.2f}%" in md
    assert f"No training log for {BERT}" in md and "## CKA" in md and "## kNN" in md
    assert md.count("The curve ") >= 2 and "unimodal" not in md  # paired words only
    assert not any(mark in md for mark in ("{{", "{%", "{#"))  # every template tag filled
    # every image the README shows exists
    for link in [x.split("](")[1].split(")")[0] for x in md.split("![")[1:]]:
        assert (out / link).is_file(), link
    # Regenerating from the same results writes the same bytes (no dates, fixed ids).
    before = {f: f.read_bytes() for f in files}
    build_report(compared_dir, out, command="igpt-eval report")
    changed = [f.name for f in files if f.read_bytes() != before[f]]
    assert not changed, changed


def test_report_includes_the_lowdata_study(compared_dir, tmp_path):
    from igpt_eval.results import save_results, to_frame

    rows = [
        dict(method=m, model=model, labels_per_class=k, seed=seed, split="test",
             metric="accuracy", layer=2, value=0.3 + 0.01 * k + 0.01 * seed)
        for m, model in [("linear probe", "tiny-ar"), ("fine-tune", "tiny-ar"),
                         ("raw pixels", "pixels")]
        for k in (4, 25)
        for seed in range(2)
    ]  # fmt: skip
    save_results(to_frame(rows), tmp_path / "low")
    out = tmp_path / "reports"
    files = build_report(compared_dir, out, lowdata_dir=tmp_path / "low")
    assert out / "lowdata.png" in files
    md = (out / "README.md").read_text()
    assert "## Low data" in md and "| linear probe (tiny-ar) | 34.5 ± 0.7 (l2) |" in md
    assert md.index("## Low data") < md.index("## Figures")
    build_report(compared_dir, out, lowdata_dir=tmp_path / "none")
    md = (out / "README.md").read_text()
    assert "No low-data results" in md and "## Low data" not in md


def test_report_cli(compared_dir, tmp_path, capsys):
    assert main(["report", "--results", str(compared_dir), "--out", str(tmp_path / "r")]) == 0
    assert "README.md" in capsys.readouterr().out
    assert (tmp_path / "r/README.md").is_file()
    # Every folder given is in the command the page records, so the page can be regenerated.
    low = tmp_path / "low"
    args = ["report", "--results", str(compared_dir), "--out", str(tmp_path / "r2")]
    assert main([*args, "--lowdata", str(low)]) == 0
    md = (tmp_path / "r2/README.md").read_text()
    assert (
        f"`igpt-eval report --results {compared_dir} --out {tmp_path / 'r2'} --lowdata {low}`" in md
    )


def test_describe_names_the_chosen_layer_and_the_embeddings():
    s = pd.DataFrame(
        dict(
            layer=range(5),
            test_acc=[0.5, 0.8, 0.7, 0.9, 0.6],
            ci_low=np.full(5, 0.0),
            ci_high=np.full(5, 0.02),
        )
    )
    s["best"] = s.layer == 3
    s["last"] = s.layer == 4
    text = describe_depth_curve("m", s, dict(value=0.55, ci_low=0.5, ci_high=0.6))
    assert "90.00% at layer 3 of 4" in text and "unimodal" not in text
    assert "untested for a peak inside the network" in text  # no predictions, no verdict
    assert "35.00 points above the raw-pixel baseline" in text
    # validation may choose the embeddings themselves: said so, not "from 90% to 90%"
    s["test_acc"], s["best"] = [0.9, 0.6, 0.7, 0.8, 0.6], s.layer == 0
    text = describe_depth_curve("m", s, None)
    assert "validation chooses the embeddings (layer 0), 90.00% on test" in text
    assert "goes from" not in text


def test_report_bad_input(compared_dir, tmp_path, capsys):
    def run(results):
        code = main(["report", "--results", str(results), "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1
        return err[0]

    assert "no results folder" in run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "holds no results files" in run(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(compared_dir, broken)
    df = pd.read_parquet(broken / "results.parquet").drop(columns=["ci_low"])
    df.to_parquet(broken / "results.parquet")
    assert "lacks results columns ['ci_low']" in run(broken)
    shutil.copyfile(compared_dir / "results.parquet", broken / "results.parquet")
    pd.read_csv(broken / "cka/cka.csv").drop(columns=["value"]).to_parquet(
        broken / "cka/cka.parquet"
    )
    assert "lacks CKA columns ['value']" in run(broken)
    code = main(["report", "--results", str(compared_dir), "--out", str(tmp_path / "r"),
                 "--full-probe", str(compared_dir)])  # fmt: skip
    assert code == 2 and "give --finetune" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    with pytest.raises(IGPTError, match="no results folder"):
        build_report(tmp_path / "missing", tmp_path / "r")


def diff_row(contrast, value, lo, hi, p, layer=3, vs_layer=4):
    return dict(
        contrast=contrast, value=value, ci_low=lo, ci_high=hi, p_value=p, layer=layer,
        vs_layer=vs_layer, model="m", probe="lbfgs", metric="accuracy_diff",
    )  # fmt: skip


def test_describe_uses_the_paired_intervals():
    s = pd.DataFrame(
        dict(
            layer=range(5),
            test_acc=[0.5, 0.8, 0.85, 0.9, 0.888],
            ci_low=np.full(5, 0.0),
            ci_high=np.full(5, 0.02),
        )
    )
    s["best"] = s.layer == 3
    s["last"] = s.layer == 4
    diffs = pd.DataFrame(
        [
            diff_row("best_vs_last", 0.012, 0.006, 0.018, 0.0004),
            diff_row("best_vs_pixels", 0.003, -0.004, 0.010, 0.41, vs_layer=0),
        ]
    )
    text = describe_depth_curve("m", s, dict(value=0.897, ci_low=0.89, ci_high=0.9), diffs)
    assert "layer 3 of 4, the layer chosen on validation" in text
    assert (
        "The last layer is significantly below the chosen layer "
        "(−1.20 pp [−1.80, −0.60], McNemar p < 0.001)" in text
    )
    assert (
        "Its chosen layer is not distinguishable from the raw pixels "
        "(+0.30 pp [−0.40, +1.00], McNemar p = 0.41)" in text
    )
    # A CI that includes 0 is never called a difference, however large the point value.
    diffs.loc[0, ["value", "ci_low", "ci_high", "p_value"]] = [0.05, -0.001, 0.1, 0.06]
    text = describe_depth_curve("m", s, None, diffs)
    assert "The last layer is not distinguishable from the chosen layer (−5.00 pp" in text
    assert "significantly" not in text.split("raw pixels")[0]
    # Without paired rows (older results) the gap is given, and said to be untested.
    text = describe_depth_curve("m", s, None)
    assert "1.20 points below it on test; untested" in text


def test_report_on_results_without_predictions(compared_dir, tmp_path, tiny_pair):
    """Results written before paired statistics (no predictions.npz, no p_value column, no
    paired rows, no validation kNN rows) still make a report, with notes instead."""
    old = tmp_path / "old"
    shutil.copytree(compared_dir, old)
    (old / PREDICTIONS_FILE).unlink()
    (old / "results.csv").unlink()
    df = pd.read_parquet(old / "results.parquet")
    df = df[(df.metric != "accuracy_diff") & ~((df.probe == "knn") & (df.split == "val"))]
    df = df.drop(columns=["p_value", "contrast", "vs_model", "vs_probe", "vs_layer", "vs_site"])
    df.to_parquet(old / "results.parquet")
    build_report(old, tmp_path / "r", lowdata_dir=None)
    md = (tmp_path / "r/README.md").read_text()
    assert "untested: these results hold no per-example test predictions" in md
    assert "no validation kNN rows" in md and "kNN layer chosen on validation" not in md
    assert "McNemar" not in md
    AR = resolve_model(tiny_pair[1]).label
    assert describe_knn(df)[0].startswith(f"- **{AR}**: kNN test accuracy goes from")


def _track_rows():
    """Track results of one run: 3 snapshots x 3 layers, accuracy rising as loss falls."""
    rows = []
    for step, loss in [(0, 2.77), (10, 2.0), (20, 1.5)]:
        for layer in range(3):
            acc = 0.5 + 0.1 * (step / 10) + (0.05 if layer == 1 else 0.0)
            common = dict(model=f"r@{step}", run="r", step=step, val_loss=loss,
                          tokens_seen=step * 64, layer=layer, site=f"blocks.{layer}.ln_1",
                          probe="lbfgs", metric="accuracy", C=1.0, n_iter=5, converged=True,
                          n_eval=100, dataset="d", objective="ar")  # fmt: skip
            rows.append(dict(common, split="val", value=acc, selected=True))
            rows.append(dict(common, split="test", value=acc, ci_low=acc - 0.02,
                             ci_high=acc + 0.02, selected=True))  # fmt: skip
    return rows


def test_report_includes_track_results(compared_dir, tmp_path, capsys):
    from igpt_eval.results import save_results, to_frame

    save_results(to_frame(_track_rows()), tmp_path / "track")
    out = tmp_path / "reports"
    args = ["report", "--results", str(compared_dir), "--out", str(out)]
    assert main([*args, "--track", str(tmp_path / "track")]) == 0
    md = (out / "README.md").read_text()
    assert "## Training dynamics" in md and md.index("## Training dynamics") < md.index(
        "## Figures"
    )
    assert "| r | 20 | 1.5000 | 1 of 2 | 75.00% [73.00, 77.00] | 70.00% |" in md
    assert "rises as the validation loss falls (Spearman ρ = -1.00 over 3 snapshots)" in md
    for stem in ("track_loss_vs_probe", "track_heatmap-r", "track_depth_curves-r"):
        assert (out / f"{stem}.png").is_file()
    capsys.readouterr()
    save_results(to_frame([dict(r, run=None) for r in _track_rows()]).drop(columns="run"),
                 tmp_path / "notrack")  # fmt: skip
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*args, "--track", str(tmp_path / "notrack"), "--overwrite"]) == 2
    assert "no track results" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing rewritten
