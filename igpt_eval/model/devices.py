"""Which device and precision a run uses, decided once, up front.

``auto`` (every command's default) means the first CUDA GPU when this torch sees one, else
the CPU. Asking for CUDA where there is none fails here with one line, before any file is
read or written. On CUDA, extraction and pretraining default to bf16 autocast (the GPU's
fast matrix units; weights, pooling and optimizer state stay float32) and to larger batches;
on the CPU they stay float32 (exact, the same on every machine, and faster on CPUs without
bf16 units), and extraction batches run side by side, one per torch thread, each on one
intra-op thread (:func:`cpu_workers`, :func:`one_thread_each`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from igpt_eval.defaults import EXTRACT_BATCH, GPU_EXTRACT_BATCH
from igpt_eval.errors import IGPTError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/``None`` → CUDA when present, else CPU; ``cuda``/``cuda:N`` only where a GPU
    is (else one clear :class:`IGPTError`); ``cpu`` as is."""
    if isinstance(device, torch.device):
        device = str(device)
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise IGPTError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible GPU"
            raise IGPTError(
                f"--device {device}: this torch ({torch.__version__}) has {build}; use "
                "--device cpu, or install a CUDA build of torch (see the README's GPU set-up)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise IGPTError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    elif dev.type != "cpu":
        raise IGPTError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def default_bf16(device) -> bool:
    """Whether bf16 autocast is the default on ``device``: on CUDA, yes."""
    return torch.device(device).type == "cuda"


def resolve_compute(compute: str | None, device) -> str:
    """``auto``/``None`` → ``bfloat16`` on CUDA, ``float32`` elsewhere; others as given."""
    if compute in (None, "auto"):
        return "bfloat16" if default_bf16(device) else "float32"
    return compute


def default_extract_batch(device) -> int:
    """Images per extraction forward on ``device`` when none is given."""
    return GPU_EXTRACT_BATCH if torch.device(device).type == "cuda" else EXTRACT_BATCH


def cpu_workers(device) -> int:
    """Independent pieces of work run at once: on the CPU one per torch thread, each on one
    thread; on a GPU one. The shipped models' matmuls are narrow (d = 128, 256 positions),
    so one extraction batch split across two threads leaves the cores idle part of the
    time: two batches side by side, one thread each, ran 71-80 images/s against 56-74 in
    alternating runs on this project's 2-core machine (89 against 61 in a quiet one). A
    piece on one thread also gives the same bits whatever the thread count. (The L-BFGS
    probes are not split this way: their many small steps hold the GIL, and two of them
    side by side ran slower than one on two threads.)"""
    return max(1, torch.get_num_threads()) if torch.device(device).type == "cpu" else 1


@contextlib.contextmanager
def one_thread_each(workers: int) -> Iterator[ThreadPoolExecutor | None]:
    """A pool of ``workers`` Python threads with torch's intra-op threads set to 1 while it
    is open (restored after); ``None`` for one worker (the caller's thread, as set). Torch
    releases the GIL inside its kernels, so the pieces run in parallel."""
    if workers == 1:
        yield None
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="igpt-eval") as pool:
            yield pool
    finally:
        torch.set_num_threads(before)
