"""The notebooks in notebooks/: executed top to bottom with small parameters, stored clean.

Each notebook has a code cell tagged ``parameters`` (its sizes, paths and seeds). The test
inserts a cell after it that overrides those values with small ones (papermill's
convention), runs the notebook in a fresh kernel of this interpreter with the notebooks
folder as working directory, then appends one cell that prints a few of the values the
notebook computed, and checks them.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from igpt_eval.data import read_source  # noqa: E402
from igpt_eval.errors import IGPTError  # noqa: E402

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
KERNEL = "igpt-eval-test"
MARK = "NOTEBOOK-VALUES "

# Small parameters per notebook ("{tmp}" is replaced by a temporary folder), and the values
# the notebook must leave behind, as expressions evaluated in its kernel.
SMALL = {
    "01_quickstart.ipynb": {
        "params": dict(N_SHOW=4, N_LOSS=100, N_COMPLETE=2, N_SAMPLES=2),
        "values": {
            "n_params": "n_params",
            "loss": "loss_nats",
            "unigram": "unigram_nats",
            "completions": "list(completions.shape)",
        },
    },
    "02_activation_cache.ipynb": {
        "params": dict(N_TRAIN=300, N_VAL=100, N_TEST=200, CACHE_DIR="{tmp}/cache", PROBE_LAYER=4),
        "values": {
            "layers": "list(stats.layer)",
            "test_acc": "test_acc",
            "pixel_acc": "pixel_acc",
        },
    },
    "03_depth_curve.ipynb": {
        "params": dict(
            N_TRAIN=200, N_VAL=50, N_TEST=150, CACHE_DIR="{tmp}/cache", OUT_DIR="{tmp}/out"
        ),
        "values": {
            "models": "[m.name for m in models]",
            "layers": "{n: list(s.layer) for n, s in summaries.items()}",
            "best": "{r.model: r.best_acc for r in table.itertuples() if r.model != PIXELS}",
            "pixel_acc": "pixel_acc",
            "knn": "knn_test.value.tolist()",
            "cka_self": "cka.query('model_a == model_b and layer_a == layer_b').value.tolist()",
            "files": "[str(p.relative_to(out_dir)) for p in out_dir.rglob('*') if p.is_file()]",
        },
    },
}


@functools.cache
def fashion_mnist_available() -> bool:
    try:
        read_source("fashion-mnist")  # reads the files: checked once, when a notebook runs
    except IGPTError:
        return False
    return True


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
    assert 1_000_000 < v["n_params"] < 3_000_000  # the mini preset: 1.6M
    # The shipped AR model predicts pixels far better than their frequencies do.
    assert 0 < v["loss"] < 0.75 * v["unigram"]
    assert v["completions"] == [2, 2, 16, 16, 1]


def check_02(v):
    assert v["layers"] == list(range(9))
    # 10 classes: chance is 10%. Even a few hundred images give a far better probe.
    assert v["test_acc"] > 0.4
    assert v["pixel_acc"] > 0.4


def check_03(v):
    assert v["models"] == ["fmnist-ar", "fmnist-bert"]
    assert v["layers"] == {"fmnist-ar": list(range(9)), "fmnist-bert": list(range(9))}
    # Chance is 10%; the layer chosen on validation does far better even on 200 images.
    assert all(acc > 0.4 for acc in v["best"].values())
    assert v["pixel_acc"] > 0.4
    assert len(v["knn"]) == 18 and max(v["knn"]) > 0.3
    # CKA of a layer with itself is 1 (9 layers in each of the 2 models).
    assert len(v["cka_self"]) == 18 and all(abs(x - 1) < 1e-9 for x in v["cka_self"])
    expected = {
        "depth_curve.png",
        "results.parquet",
        "results.csv",
        "cka/cka.parquet",
        "tables/comparison.md",
        "models.json",
        "report/README.md",
        "report/depth_curves.png",
    }
    assert expected <= set(v["files"])


CHECKS = {
    "01_quickstart.ipynb": check_01,
    "02_activation_cache.ipynb": check_02,
    "03_depth_curve.ipynb": check_03,
}


def test_every_notebook_has_small_parameters():
    assert NOTEBOOKS, "no notebooks found"
    assert {p.name for p in NOTEBOOKS} == set(SMALL) == set(CHECKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_clean(path):
    """Stored without outputs or execution counts, with the standard kernel, and a
    parameters cell first among the code cells."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell holds outputs; strip them"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert parameters_cell(nb) == code[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, kernel_manager_factory):
    if not fashion_mnist_available():
        pytest.skip(
            "Fashion-MNIST not found (install Debian's dataset-fashion-mnist, as .ci/run does)"
        )
    spec = SMALL[path.name]
    params = {
        k: (v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v)
        for k, v in spec["params"].items()
    }
    t0 = time.perf_counter()
    values, _ = run_notebook(path, params, spec["values"], kernel_manager_factory)
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s with test parameters")
    CHECKS[path.name](values)
