"""The command line: convert, info, and the one-line-error contract."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from igpt_eval.cli import main
from igpt_eval.data.palette import Palette
from igpt_eval.model import IGPT, load_model, save_model
from igpt_eval.model.config import IGPTConfig


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = IGPT(IGPTConfig.preset("tiny"))
    with torch.no_grad():
        model.wtet.weight.normal_()
    pal = Palette(np.linspace(-1, 1, 48, dtype=np.float32).reshape(16, 3))
    return save_model(model, tmp_path / "ck", palette=pal), model


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("igpt-eval: error: "), err
    return err[0]


def test_convert_roundtrip_through_hf(tmp_path, checkpoint, capsys):
    ck, model = checkpoint
    assert main(["convert", "--to-hf", str(ck), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf/preprocessor_config.json").is_file()  # the palette travels along
    assert (
        main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    )
    assert "wrote igpt-eval checkpoint" in capsys.readouterr().out
    back = load_model(tmp_path / "back")
    x = torch.randint(0, 16, (2, 64))
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    assert (np.load(tmp_path / "back/palette.npy") == np.load(ck / "palette.npy")).all()


def test_convert_never_overwrites_without_asking(tmp_path, checkpoint, capsys):
    ck, _ = checkpoint
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["convert", "--to-hf", str(ck), "--out", str(out)]) == 2
    assert "--overwrite" in one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["convert", "--to-hf", str(ck), "--out", str(out), "--overwrite"]) == 0


def test_convert_bad_inputs_are_one_line(tmp_path, checkpoint, capsys):
    ck, _ = checkpoint
    assert main(["convert", "--from-hf", str(ck), "--out", str(tmp_path / "x")]) == 2
    assert "already an igpt-eval checkpoint" in one_error_line(capsys)
    assert not (tmp_path / "x").exists()
    assert main(["convert", "--to-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "y")]) == 2
    assert "no checkpoint folder" in one_error_line(capsys)
    with pytest.raises(Exception, match="no checkpoint folder"):  # --debug shows the traceback
        main(["--debug", "convert", "--to-hf", str(tmp_path / "nope"), "--out", "y"])


def test_info(tmp_path, checkpoint, capsys):
    ck, model = checkpoint
    assert main(["info", str(ck)]) == 0
    out = capsys.readouterr().out
    assert f"{model.n_params():,}" in out and "16 colours x 3 channels" in out
    assert main(["info", str(ck / "palette.npy")]) == 0
    assert "16 RGB colours" in capsys.readouterr().out
    (ck / "model.safetensors").write_bytes(b"truncated")
    assert main(["info", str(ck)]) == 2
    assert "not a readable safetensors" in one_error_line(capsys)


def test_console_entry_point_error_has_no_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "igpt_eval.cli", "info", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == f"igpt-eval: error: {tmp_path / 'missing'} does not exist"


@pytest.mark.parametrize("command", [[], ["probe"], ["compare"], ["track"], ["campaign"]])
def test_help_loads_no_torch(command):
    """``--help`` reads the defaults from light settings modules: importing torch (seconds)
    would make every help screen and typo that slow."""
    code = (
        "import sys\nfrom igpt_eval.cli.main import main\n"
        f"sys.argv = ['igpt-eval', *{command!r}, '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"


def test_finetune_and_lowdata_flags_reach_their_configs():
    # config_from_args fills each config field from the flag of the same name.
    from igpt_eval.cli import build_parser
    from igpt_eval.cli.common import config_from_args
    from igpt_eval.studies.lowdata import LowDataConfig
    from igpt_eval.train.settings import FinetuneConfig

    parser = build_parser()
    args = parser.parse_args(
        "finetune --model m --out o --lr 0.01 --bf16 --layer 3 --patience 2 --objective clf "
        "--batch-size 16 --eval-every 7 --seed 5 --augment".split()
    )
    cfg = config_from_args(FinetuneConfig, args, steps=9)
    assert (cfg.steps, cfg.lr, cfg.bf16, cfg.layer, cfg.patience) == (9, 0.01, True, 3, 2)
    assert (cfg.objective, cfg.batch_size, cfg.eval_every, cfg.seed) == ("clf", 16, 7, 5)
    assert cfg.augment and cfg.betas == FinetuneConfig().betas  # no flag: the default

    args = parser.parse_args(
        "lowdata --model m --out o --labels-per-class 4 10 --seeds 2 --no-bf16".split()
    )
    cfg = config_from_args(LowDataConfig, args, ks=tuple(args.labels_per_class), finetune=False)
    assert (cfg.ks, cfg.seeds, cfg.bf16, cfg.finetune) == ((4, 10), 2, False, False)
    assert cfg.select_iter == LowDataConfig().select_iter


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_honour_the_umask(tmp_path, checkpoint, umask):
    """Checkpoints, JSON and results are written atomically through a temporary file;
    they still get the mode the user's umask gives any new file."""
    import os
    import stat

    from igpt_eval.io import write_json
    from igpt_eval.model import load_model, load_palette, save_model

    ck, _ = checkpoint
    old = os.umask(umask)
    try:
        out = save_model(load_model(ck), tmp_path / "copy", palette=load_palette(ck))
        write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    for f in (out / "model.safetensors", out / "config.json", tmp_path / "x.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
