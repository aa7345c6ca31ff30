"""What the benchmark scripts share: timing and the machine's practical matmul peak.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they
import this module as ``common``.
"""

from __future__ import annotations

import statistics
import time

import torch


def timeit(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of one square ``n×n @ n×n`` matmul (median of ``repeats``): the
    machine's practical peak for this dtype, the denominator of a model FLOP utilisation."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / timeit(lambda: a @ b, repeats) / 1e9
