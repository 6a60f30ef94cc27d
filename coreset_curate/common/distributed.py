"""torch.distributed helpers: the rank and world size under torchrun, and a barrier."""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["distributed_context", "current_world", "barrier", "rank_plan"]


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


def rank_plan(positions: np.ndarray, batch_size: int, rank: int, world: int,
              generator: torch.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """This rank's batches of one distributed epoch.

    ``positions`` are shuffled the same way on every rank (``generator`` seeded alike),
    cut into global batches of ``batch_size``, and each global batch is split into
    ``world`` disjoint slices; rank r trains on slice r. Every rank so runs the same number
    of optimizer steps (DDP never waits on a rank that ran out of data) and the slices
    together cover every position exactly once. A slice left empty (a last global batch
    smaller than ``world``) gets one sample with weight 0, which adds nothing to the
    gradient.

    Args:
        positions: the epoch's rows.
        batch_size: the global batch size.
        rank: this rank.
        world: the number of ranks.
        generator: seeded alike on every rank.

    Returns:
        ``[(positions, weights), ...]``, this rank's batches in order.
    """
    perm = np.asarray(positions)[torch.randperm(len(positions), generator=generator).numpy()]
    plan = []
    for start in range(0, len(perm), batch_size):
        part = np.array_split(perm[start : start + batch_size], world)[rank]
        if len(part):
            plan.append((part, np.ones(len(part), dtype=np.float32)))
        else:
            plan.append((perm[start : start + 1], np.zeros(1, dtype=np.float32)))
    return plan
