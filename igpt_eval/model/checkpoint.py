"""Checkpoint folders (docs/design.md): ``model.safetensors`` + ``config.json`` (+ ``palette.npy``).

Weights are safetensors only: nothing in a checkpoint is ever unpickled. Files are written
atomically, so an interrupted save leaves the previous checkpoint readable.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from igpt_eval.data.palette import Palette
from igpt_eval.errors import IGPTError
from igpt_eval.io import atomic_write, read_json, write_json
from igpt_eval.model.config import IGPTConfig
from igpt_eval.model.igpt import IGPT

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PALETTE = "palette.npy"


def save_model(
    model: IGPT, path: str | Path, palette=None, dtype: torch.dtype | None = None
) -> Path:
    """Write ``model`` (an :class:`~igpt_eval.model.igpt.IGPT`) and optionally its palette.

    ``dtype`` stores the floating-point weights in that type (``torch.bfloat16`` halves the
    file); :func:`load_model` widens them back to float32, exactly."""
    path = Path(path)
    if palette is not None:
        model.config.check_palette(palette)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    blob = st_save(tensors, metadata={"format": "pt", "library": "igpt-eval"})
    with atomic_write(path / WEIGHTS) as f:
        f.write(blob)
    model.config.save(path / CONFIG)
    if palette is not None:
        palette.save(path / PALETTE)
    return path


def check_state_dict(expected: dict, state: dict, where: str) -> None:
    """Raise one clear error when ``state`` does not have exactly the expected keys and shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' …' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' …' if len(unexpected) > 3 else ''}")
        raise IGPTError(f"{where} does not match its config: {'; '.join(parts)}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise IGPTError(
                f"{where}: {k} has shape {list(state[k].shape)}, config implies {list(v.shape)}"
            )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> IGPT:
    """Read a checkpoint folder; every way it can be broken is one :class:`IGPTError`."""
    path = Path(path)
    if not path.is_dir():
        raise IGPTError(f"no checkpoint folder at {path}")
    cfg = IGPTConfig.load(path / CONFIG)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise IGPTError(f"{path} has no {WEIGHTS}")
    try:
        state = load_file(weights, device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise IGPTError(f"{weights} is not a readable safetensors file ({e})") from None
    # Build on the meta device: no memory or time spent on an initialisation we overwrite.
    with torch.device("meta"):
        model = IGPT(cfg)
    check_state_dict(model.state_dict(), state, str(weights))
    # Weights stored narrower (bf16, to fit a file) compute in float32 like any other.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    return model.eval()


def load_palette(path: str | Path) -> Palette | None:
    """The palette stored in a checkpoint folder, or ``None`` when it has none."""
    f = Path(path) / PALETTE
    return Palette.load(f) if f.is_file() else None


@contextmanager
def _staged_folder(final: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``final`` to write into; when the block ends without
    an error it replaces ``final`` by a rename, so a folder under the final name is always
    complete (a kill mid-write leaves only the temporary one, cleared by the next write)."""
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


# ------------------------------------------------------------------ resumable training state
RESUME = "resume"
LATEST = "LATEST"
STATE = "state.pt"


def save_resume(out: str | Path, step: int, model, state: dict) -> Path:
    """Write ``out/resume/step-<step>/`` (weights + ``state.pt``) and point ``LATEST`` at it.

    ``state`` holds tensors and plain Python values only (an optimizer's ``state_dict``,
    counters), so it reads back with ``torch.load(weights_only=True)``. The folder is written
    under a temporary name and renamed into place, and ``LATEST`` is replaced atomically
    after it, so a kill mid-checkpoint leaves the previous one in use. Older step folders are
    removed. Returns the new folder.
    """
    resume = Path(out) / RESUME
    final = resume / f"step-{step}"
    with _staged_folder(final) as tmp:
        save_model(model, tmp)
        with atomic_write(tmp / STATE) as f:
            torch.save(state, f)
    with atomic_write(resume / LATEST, "w") as f:
        f.write(final.name + "\n")
    for old in resume.glob("step-*"):  # keep only the newest
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def has_resume(out: str | Path) -> bool:
    """Whether ``out`` holds a complete resumable checkpoint (``resume/LATEST``)."""
    return (Path(out) / RESUME / LATEST).is_file()


def load_resume(out: str | Path) -> tuple[dict, dict, Path]:
    """``(weights, state, folder)`` of the checkpoint ``out/resume/LATEST`` names.

    Weights come from safetensors, the state through ``torch.load(weights_only=True)``;
    a missing or unreadable checkpoint is one :class:`IGPTError`.
    """
    out = Path(out)
    if not has_resume(out):
        raise IGPTError(f"nothing to resume in {out}: no resume/LATEST checkpoint")
    ck = out / RESUME / (out / RESUME / LATEST).read_text().strip()
    try:
        state = torch.load(ck / STATE, weights_only=True, map_location="cpu")
        weights = load_file(ck / WEIGHTS)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user problem
        raise IGPTError(f"checkpoint {ck} is unreadable ({e})") from None
    return weights, state, ck


# ------------------------------------------------------------------ training snapshots
SNAPSHOTS = "snapshots"
SNAPSHOT_INFO = "snapshot.json"


def save_snapshot(out: str | Path, step: int, model, info: dict, palette_file=None) -> Path:
    """Keep the weights of step ``step`` as ``out/snapshots/step-XXXXXX/``: a full checkpoint
    folder (``model.safetensors``, ``config.json``, ``palette.npy``, and the run's
    ``run.json``, so that the snapshot names its dataset and split seed as the final model
    does) plus ``snapshot.json`` (``info``: the step, the validation loss there, …).

    Written under a temporary name and renamed into place, so a folder that exists is
    complete; writing the same step again (a resumed run passing it a second time) replaces
    it with the same weights.
    """
    final = Path(out) / SNAPSHOTS / f"step-{step:06d}"
    with _staged_folder(final) as tmp:
        save_model(model, tmp)
        if palette_file is not None and Path(palette_file).is_file():
            shutil.copy2(palette_file, tmp / PALETTE)
        if (Path(out) / "run.json").is_file():
            shutil.copy2(Path(out) / "run.json", tmp / "run.json")
        write_json(tmp / SNAPSHOT_INFO, {"step": step, **info})
    return final


def list_snapshots(run: str | Path) -> list[tuple[int, Path, dict]]:
    """``(step, folder, info)`` of every complete snapshot in ``run/snapshots``, by step."""
    root = Path(run) / SNAPSHOTS
    found = []
    for d in sorted(root.glob("step-*")) if root.is_dir() else []:
        if (d / SNAPSHOT_INFO).is_file() and (d / WEIGHTS).is_file():
            info = read_json(d / SNAPSHOT_INFO)
            found.append((int(info["step"]), d, info))
    return sorted(found, key=lambda t: t[0])
