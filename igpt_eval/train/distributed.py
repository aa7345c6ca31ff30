"""Data-parallel helpers for ``torchrun``: the same code path runs as one process or many.

Launched by ``torchrun --nproc_per_node=N``, :func:`init` joins the process group (NCCL on
GPU, gloo on CPU); launched plainly, every helper here degrades to the single-process case.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as td


def init(device: str = "cpu") -> None:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1); else nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not td.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        td.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def world_size() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def rank() -> int:
    return td.get_rank() if td.is_initialized() else 0


def is_main() -> bool:
    """Only rank 0 writes files and shows progress."""
    return rank() == 0


def barrier() -> None:
    if td.is_initialized():
        td.barrier()


def main_first(fn):
    """``fn()`` on rank 0, then (after a barrier) on the other ranks: for work such as
    building a shared cache, which rank 0 writes and the others then only read."""
    if is_main():
        result = fn()
    barrier()
    if not is_main():
        result = fn()
    return result


def shard(x: torch.Tensor) -> torch.Tensor:
    """This process's contiguous share of a global batch (rows split evenly by rank)."""
    return x.chunk(world_size())[rank()] if world_size() > 1 else x


def mean(value: float) -> float:
    """The mean of a per-process number over all processes."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    td.all_reduce(t)
    return t.item() / world_size()


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` (gradients averaged over processes)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module)


def no_sync(module: torch.nn.Module, sync: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
    if sync or not hasattr(module, "no_sync"):
        return contextlib.nullcontext()
    return module.no_sync()


def shutdown() -> None:
    if td.is_initialized():
        td.destroy_process_group()
