"""keep_freed_memory: applies on glibc, and allocations then stop faulting pages in."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import torch
from igpt_eval.train.malloc import keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
else:
    # glibc's default, with its on-the-fly raising pinned off so the count is repeatable.
    import ctypes, ctypes.util
    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, 128 << 10)
def churn():
    # As a training step does: several activations alive together, all freed at the end.
    for _ in range(5):
        acts = [torch.empty(2 << 20).fill_(1.0) for _ in range(8)]  # 8 × 8 MiB
        del acts
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_stops_page_faults_of_reused_buffers():
    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())

    off, on = faults("off"), faults("on")
    # Off: each 8 MiB buffer is its own mmap, returned on free and faulted in again (16,384
    # pages a round); on: they come from the heap and stay there.
    assert off > 4 * 10_000
    assert on < off / 20
