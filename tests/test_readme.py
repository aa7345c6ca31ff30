"""The README's Python example, run as it stands on a tiny model and dataset.

The block under "## From Python" is executed top to bottom with one change: ``DATASET`` names
a small npz file instead of Fashion-MNIST. The working directory is a temporary folder whose
``models/fmnist-ar`` is a tiny AR checkpoint (8 blocks, so that the example's layer 4 and
5-layer concatenation exist), so every path in the example resolves there and every cache it
writes lands there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python() -> str:
    """The first ```python block after the "## From Python" heading."""
    text = README.read_text()
    section = text[text.index("## From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_example_names_its_settings_once():
    code = readme_python()
    assert code.count('MODEL, DATASET = "models/fmnist-ar", "fashion-mnist"') == 1


@pytest.mark.usefixtures("one_torch_thread")
def test_readme_python_example_runs(tiny_pair, tmp_path, monkeypatch):
    import torch

    from igpt_eval.model import IGPT, IGPTConfig, load_palette, save_model

    _, ar, _, npz = tiny_pair  # its grey 8 px pattern dataset (96 train, 32 test) and palette
    torch.manual_seed(0)
    model = IGPT(IGPTConfig.preset("tiny", n_layer=8))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    save_model(model, tmp_path / "models" / "fmnist-ar", palette=load_palette(ar))

    code = readme_python().replace('"fashion-mnist"', repr(f"npz:{npz}"))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)

    assert tuple(scope["feats"].shape) == (9, 8, 32)
    assert tuple(scope["halves"].shape) == (8, 64)
    assert len(scope["cache"].labels) == 32 and scope["cache"].layers == list(range(9))
    assert len(summary := scope["run"].summary) == 9 and summary.best.sum() == 1
    assert scope["df"] is scope["run"].results
    assert (tmp_path / "runs/probe/ar/predictions.npz").is_file()
    assert scope["pred"].correct(scope["layer4"]).shape == (32,)
    assert len(scope["curve"].summary) == 9 and scope["curve"].figure.axes


def readme_quickstart() -> list[list[str]]:
    """The commands of the one-minute section, split as a shell would."""
    import shlex

    text = README.read_text()
    section = text[text.index("## One minute on `digits`") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


@pytest.mark.usefixtures("one_torch_thread")
def test_readme_quickstart_runs(tmp_path, monkeypatch, capsys):
    """The three commands as printed, with fewer training steps (the test checks that they
    run and chain, not the model they make)."""
    from igpt_eval.cli import main

    monkeypatch.chdir(tmp_path)
    commands = readme_quickstart()
    assert [c[:2] for c in commands] == [["igpt-eval", "pretrain"], ["igpt-eval", "probe"],
                                         ["igpt-eval", "track"]]  # fmt: skip
    pretrain = commands[0][1:]
    pretrain[pretrain.index("--steps") + 1] = "60"
    for argv in (pretrain, commands[1][1:], commands[2][1:]):
        assert main([*argv, "--no-progress"]) == 0, argv
    out = capsys.readouterr().out
    assert "linear probes (lbfgs, torch) of digits-ar" in out and "Spearman rho" in out
    assert (tmp_path / "runs/track/results.parquet").is_file()
