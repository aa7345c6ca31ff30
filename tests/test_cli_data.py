"""`igpt-eval palette` and `igpt-eval tokenize` end to end on a tiny npz dataset."""

from __future__ import annotations

import numpy as np

from igpt_eval.cli import main
from igpt_eval.data import TokenCache, load_dataset
from igpt_eval.data.palette import Palette


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("igpt-eval: error: ")
    return lines[0]


def test_palette_then_tokenize(tmp_path, tiny_npz, capsys):
    pal_path = tmp_path / "pal.npy"
    ds = f"npz:{tiny_npz}"
    assert (
        main(["palette", "--dataset", ds, "--k", "6", "--out", str(pal_path), "--sample", "2000"])
        == 0
    )
    out = capsys.readouterr().out
    assert "k=6" in out and str(pal_path) in out
    pal = Palette.load(pal_path)
    assert pal.k == 6 and pal.channels == 3

    cache = tmp_path / "tok"
    args = [
        "tokenize",
        "--dataset",
        ds,
        "--palette",
        str(pal_path),
        "--split",
        "test",
        "--n-px",
        "4",
        "--out",
        str(cache),
    ]
    assert main(args) == 0
    assert "written" in capsys.readouterr().out
    tc = TokenCache.open(cache, pal)
    test = load_dataset(ds, "test", n_px=4)
    assert tc.tokens.shape == (12, 16)
    np.testing.assert_array_equal(tc.tokens, pal.encode(test.images))
    np.testing.assert_array_equal(tc.labels, test.labels)
    # Running it again reuses the cache.
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out


def test_palette_refuses_existing_out(tmp_path, tiny_npz, capsys):
    pal_path = tmp_path / "pal.npy"
    pal_path.write_bytes(b"precious")
    code = main(["palette", "--dataset", f"npz:{tiny_npz}", "--k", "4", "--out", str(pal_path)])
    assert code == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert pal_path.read_bytes() == b"precious"
    assert (
        main(
            [
                "palette",
                "--dataset",
                f"npz:{tiny_npz}",
                "--k",
                "4",
                "--out",
                str(pal_path),
                "--overwrite",
                "--sample",
                "500",
            ]
        )
        == 0
    )
    assert Palette.load(pal_path).k == 4


def test_unknown_dataset(tmp_path, capsys):
    code = main(
        ["palette", "--dataset", "imagenet-typo", "--k", "4", "--out", str(tmp_path / "p.npy")]
    )
    assert code == 2
    assert "known datasets" in _one_error_line(capsys)
    assert not (tmp_path / "p.npy").exists()


def test_tokenize_channel_mismatch(tmp_path, tiny_npz, capsys):
    grey = tmp_path / "grey.npy"
    Palette(np.array([[-1.0], [1.0]], np.float32)).save(grey)
    code = main(
        [
            "tokenize",
            "--dataset",
            f"npz:{tiny_npz}",
            "--palette",
            str(grey),
            "--split",
            "test",
            "--out",
            str(tmp_path / "tok"),
        ]
    )
    assert code == 2
    assert "3 channels but the palette has 1" in _one_error_line(capsys)


def test_tokenize_refuses_other_palette_without_overwrite(tmp_path, tiny_npz, capsys):
    ds = f"npz:{tiny_npz}"
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    Palette.fit(load_dataset(ds).images, 3, seed=0).save(a)
    Palette.fit(load_dataset(ds).images, 5, seed=0).save(b)
    base = ["tokenize", "--dataset", ds, "--split", "val", "--out", str(tmp_path / "tok")]
    assert main([*base, "--palette", str(a)]) == 0
    capsys.readouterr()
    assert main([*base, "--palette", str(b)]) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert main([*base, "--palette", str(b), "--overwrite"]) == 0
    assert TokenCache.open(tmp_path / "tok").manifest.palette_k == 5


def test_tokenize_missing_palette(tmp_path, tiny_npz, capsys):
    code = main(
        [
            "tokenize",
            "--dataset",
            f"npz:{tiny_npz}",
            "--palette",
            str(tmp_path / "nope.npy"),
            "--out",
            str(tmp_path / "tok"),
        ]
    )
    assert code == 2
    assert "not found" in _one_error_line(capsys)
