"""Execute notebooks in place with their own parameters, keeping the outputs.

    python notebooks/execute.py                      # every notebook here
    python notebooks/execute.py 03_depth_curve.ipynb # one

The committed notebooks carry the outputs this wrote from the shipped models (each runs in
this folder, in a kernel of the interpreter that runs this script, with the user cache
folder as every command uses it). The test suite executes the same notebooks on tiny models
(tests/test_notebooks.py).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def kernel_manager(root: Path):
    """A kernel of this interpreter, whatever kernelspecs are installed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec = root / "igpt-eval"
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "igpt-eval", "language": "python"})
    )
    ksm = KernelSpecManager(kernel_dirs=[str(root)], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name="igpt-eval", kernel_spec_manager=ksm)


def execute(path: Path, timeout: int = 3600) -> float:
    """Run ``path`` top to bottom and write it back with its outputs; seconds taken."""
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as kernels:
        client = nbclient.NotebookClient(
            nb,
            km=kernel_manager(Path(kernels)),
            timeout=timeout,
            allow_errors=False,
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    nbformat.write(nb, path)
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    paths = [HERE / a for a in argv] if argv else sorted(HERE.glob("*.ipynb"))
    for p in paths:
        print(f"{p.name}: {execute(p):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
