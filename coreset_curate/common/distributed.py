"""torch.distributed helpers: the rank and world size under torchrun, and a barrier."""

from __future__ import annotations

import os

import torch

__all__ = ["distributed_context", "current_world", "barrier"]


def distributed_context() -> tuple[int, int]:
    """(rank, world_size) under torchrun (initialising the process group: gloo on CPU,
    nccl on CUDA), (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    dist = torch.distributed
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def current_world() -> tuple[int, int]:
    """(rank, world_size) of an initialised process group, (0, 1) without one; unlike
    ``distributed_context`` it never initialises a group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier(world: int) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if world > 1:
        torch.distributed.barrier()
