"""Keep freed activation memory in the process, so training does not page-fault every step.

glibc hands each allocation above a threshold (128 KiB, raised on the fly up to 32 MiB) its
own ``mmap`` and gives it back to the kernel on free, and trims the heap top whenever more
than a few MiB lie free there. A CPU training step frees and reallocates the same
activations every step, so each one is faulted in again, page by page, with zeroing: on the
shipped model about 40,000 page faults and 15–20% of a bf16 step
(``benchmarks/train_step.py`` reports both loops with this on).

:func:`keep_freed_memory` raises both thresholds once, for the whole process. The price is
that the process keeps its peak heap rather than returning it to the system: right for a
training process, so the ``pretrain`` and ``finetune`` commands call it; a notebook may
call it by hand. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# glibc's ceiling for the mmap threshold on 64-bit systems (larger values are refused).
_MMAP_MAX = 32 << 20


def keep_freed_memory() -> bool:
    """Serve allocations up to 32 MiB from the heap and never trim it; True if applied."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1  # keep up to 1 GiB of free heap top
    ok &= mallopt(_M_TOP_PAD, 64 << 20) == 1  # and grow the heap in 64 MiB steps
    return bool(ok)
