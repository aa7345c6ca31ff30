"""The notebooks in notebooks/: committed with their outputs, executed here on tiny models.

Each notebook has a code cell tagged ``parameters`` (its models, sizes, paths and seeds). The
test inserts a cell after it that overrides those values (papermill's convention): tiny
models pretrained here on scikit-learn's bundled ``digits`` in a few seconds, so every
notebook meets a model of another depth, width and image size than the shipped ones. It runs
the notebook in a fresh kernel of this interpreter with the notebooks folder as working
directory, then appends one cell that prints a few of the values the notebook computed, and
checks them. The committed outputs come from the shipped models (``notebooks/execute.py``).
"""

from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
KERNEL = "igpt-eval-test"
MARK = "NOTEBOOK-VALUES "

# The modules a notebook may import from: the package and its documented subpackages.
PUBLIC = {
    "igpt_eval",
    "igpt_eval.names",
    "igpt_eval.stats",
    "igpt_eval.analysis",
    "igpt_eval.studies.track",
    "igpt_eval.cli",
    "igpt_eval.probes",
    "igpt_eval.reporting",
    "igpt_eval.reporting.figures",
    "igpt_eval.reporting.tables",
    "igpt_eval.reporting.track",
    "igpt_eval.reporting.words",
    "igpt_eval.results",
}

# Parameters per notebook ("{tmp}" is replaced by a temporary folder, "{ar}"/"{bert}" by the
# tiny models' folders), and the values the notebook must leave behind, as expressions
# evaluated in its kernel.
SMALL = {
    "01_quickstart.ipynb": {
        "params": dict(
            MODEL="{ar}", DATASET="digits", N_SHOW=4, N_LOSS=100, N_COMPLETE=2, N_SAMPLES=2
        ),  # fmt: skip
        "values": {
            "n_params": "n_params",
            "loss": "loss_nats",
            "unigram": "unigram_nats",
            "completions": "list(completions.shape)",
        },
    },
    "02_activation_cache.ipynb": {
        "params": dict(MODEL="{ar}"),
        "values": {
            "layers": "list(stats.layer)",
            "sizes": "{s: c.n for s, c in caches.items()}",
            "test_acc": "test_acc",
        },
    },
    "03_depth_curve.ipynb": {
        "params": dict(MODELS=["{ar}", "{bert}"], OUT_DIR="{tmp}/out", DEVICE="cpu"),
        "values": {
            "models": "[m.name for m in c.models]",
            "layers": "{n: list(s.layer) for n, s in summaries.items()}",
            "best": "{r.model: r.best_acc for r in table.itertuples() if r.model in summaries}",
            "pair": "[d.diff, d.ci_low, d.ci_high]",
            "files": "[str(p.relative_to(OUT_DIR)) for p in Path(OUT_DIR).rglob('*')]",
        },
    },
    "04_released_models.ipynb": {
        "params": dict(MODEL="{ar}", WORK_DIR="{tmp}/hf", DEVICE="cpu"),
        "values": {
            "kind": "released.kind",
            "same_tokens": "bool(np.array_equal(tokens, rgb_tokens))",
            "max_diff": "float((a - b).abs().max())",
            "same_curve": "bool(same)",
            "layers": "list(curve.summary.layer)",
        },
    },
    "05_pretrain_track_digits.ipynb": {
        "params": dict(STEPS=40, SNAPSHOTS=2, RUN_DIR="{tmp}/run"),
        "values": {
            "steps": "list(summ.step)",
            "layers": "list(curve.summary.layer)",
            "contrasts": "sorted(set(curve.differences.contrast))",
        },
    },
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """An AR and a BERT ``tiny`` model (3 blocks of width 32, 8 px) pretrained for a few
    steps on ``digits``, sharing one palette and split: ``(ar_dir, bert_dir)``."""
    from igpt_eval.cli import main

    root = tmp_path_factory.mktemp("models")
    common = ["--dataset", "digits", "--model", "tiny", "--steps", "60", "--lr", "0.003",
              "--eval-every", "30", "--no-progress"]  # fmt: skip
    ar, bert = root / "digits-ar", root / "digits-bert"
    assert main(["pretrain", *common, "--objective", "ar", "--out", str(ar)]) == 0
    palette = str(ar / "palette.npy")
    assert main(["pretrain", *common, "--objective", "bert", "--palette", palette,
                 "--out", str(bert)]) == 0  # fmt: skip
    return ar, bert


@pytest.fixture(scope="module")
def kernel_manager_factory(tmp_path_factory):
    """Kernels of *this* interpreter, whatever kernelspecs the user has installed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "igpt-eval tests", "language": "python"})
    )

    def make():
        ksm = KernelSpecManager(kernel_dirs=[str(root)], ensure_native_kernel=False)
        return AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)

    return make


def parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


def run_notebook(path: Path, params: dict, values: dict, make_km, timeout: int = 600):
    """Execute ``path`` with ``params`` overriding its parameters cell; return ``values``
    evaluated in its kernel at the end, and the executed notebook."""
    nb = nbformat.read(path, as_version=4)
    i = parameters_cell(nb)
    names = set()
    for line in nb.cells[i].source.splitlines():
        if "=" in line and not line.startswith((" ", "#")):
            names.add(line.split("=")[0].strip())
    unknown = set(params) - names
    assert not unknown, f"{path.name} has no parameters {sorted(unknown)}"
    inject = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    inject.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, inject)
    report = ", ".join(f"{json.dumps(k)}: {expr}" for k, expr in values.items())
    dump = f"print({MARK!r} + __import__('json').dumps({{{report}}}))"
    nb.cells.append(nbformat.v4.new_code_cell(dump))
    client = nbclient.NotebookClient(
        nb,
        km=make_km(),
        timeout=timeout,
        allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = next(x for x in out.splitlines() if x.startswith(MARK))
    return json.loads(line[len(MARK) :]), nb


def check_01(v):
    assert 10_000 < v["n_params"] < 100_000  # the tiny preset
    # Even 60 steps of pretraining predict pixels better than their frequencies do.
    assert 0 < v["loss"] < v["unigram"]
    assert v["completions"] == [2, 2, 8, 8, 1]  # samples, images, 8 x 8 grey


def check_02(v):
    assert v["layers"] == [0, 1, 2, 3]  # 3 blocks and ln_f: no layer number is assumed
    assert all(n > 0 for n in v["sizes"].values())
    assert v["test_acc"] > 0.3  # 10 classes: chance is 10%


def check_03(v):
    ar, bert = v["models"]
    assert ar.startswith("digits-ar-") and bert.startswith("digits-bert-")  # labels
    assert v["layers"] == {ar: [0, 1, 2, 3], bert: [0, 1, 2, 3]}
    assert all(acc > 0.3 for acc in v["best"].values())
    diff, lo, hi = v["pair"]
    assert lo <= diff <= hi
    expected = {"results.parquet", "cka/cka.parquet", "tables/comparison.md", "models.json",
                "depth_curve.png"}  # fmt: skip
    assert expected <= set(v["files"])


def check_04(v):
    assert v["kind"] == "hf-folder"
    assert v["same_tokens"] and v["max_diff"] == 0.0
    assert v["same_curve"] and v["layers"] == [0, 1, 2, 3]


def check_05(v):
    assert v["steps"][0] == 0 and v["steps"][-1] == 40 and len(v["steps"]) >= 3
    assert v["layers"] == [0, 1, 2, 3]
    assert {"best_vs_last", "best_vs_pixels"} <= set(v["contrasts"])


CHECKS = {
    "01_quickstart.ipynb": check_01,
    "02_activation_cache.ipynb": check_02,
    "03_depth_curve.ipynb": check_03,
    "04_released_models.ipynb": check_04,
    "05_pretrain_track_digits.ipynb": check_05,
}


def test_every_notebook_has_small_parameters():
    assert NOTEBOOKS, "no notebooks found"
    assert {p.name for p in NOTEBOOKS} == set(SMALL) == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_with_outputs(path):
    """Committed executed top to bottom (every code cell run once, in order, none failed),
    with the standard kernel and a parameters cell first among the code cells."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: run it top to bottom"
    for cell in code:
        kinds = {o.output_type for o in cell.outputs}
        assert "error" not in kinds, f"{path.name}: a cell failed"
        for o in cell.outputs:
            text = o.get("text", "") if o.output_type == "stream" else ""
            assert "Traceback" not in text and "/tmp/pytest" not in text
            assert "Warning" not in text, f"{path.name}: a warning in its outputs"
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: no figure in its outputs"
    indices = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert parameters_cell(nb) == indices[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_imports_only_the_public_api(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(x for x in cell.source.splitlines() if not x.startswith("%"))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("igpt_eval"):
                assert node.module in PUBLIC, f"{path.name} imports from {node.module}"
                assert not any(a.name.startswith("_") for a in node.names)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("igpt_eval"):
                        assert a.name in PUBLIC, f"{path.name} imports {a.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, kernel_manager_factory, tiny_models):
    spec = SMALL[path.name]
    ar, bert = tiny_models

    def fill(v):
        if isinstance(v, list):
            return [fill(x) for x in v]
        if not isinstance(v, str):
            return v
        return (
            v.replace("{tmp}", str(tmp_path)).replace("{ar}", str(ar)).replace("{bert}", str(bert))
        )

    params = {k: fill(v) for k, v in spec["params"].items()}
    t0 = time.perf_counter()
    values, _ = run_notebook(path, params, spec["values"], kernel_manager_factory)
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s with test parameters")
    CHECKS[path.name](values)
