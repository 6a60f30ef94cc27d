"""PyTorch samplers that feed a training loop the subset of each epoch of an index.

    sampler = SubsetSampler("index.parquet", data=train)       # positions in ``train``
    loader = DataLoader(dataset, batch_size=128, sampler=sampler)
    for epoch in range(E):
        sampler.set_epoch(epoch)
        for batch_positions, ... in loader:
            loss = (per_sample_loss * sampler.weights_of(batch_positions)).mean()

``DistributedSubsetSampler`` gives each rank a disjoint share of the epoch's subset (the
shares together are exactly the subset; their sizes differ by at most one sample, so a
DDP loop should use ``torch.distributed.algorithms.join.Join`` or drop the last batch).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Sampler

from ..common.checks import UnknownIds, align
from ..data import ImageData
from ..common.distributed import current_world
from ..common.index import epoch_rows, read_index

__all__ = ["SubsetSampler", "DistributedSubsetSampler"]


class SubsetSampler(Sampler[int]):
    """Yields the dataset positions of one epoch's subset, each exactly once.

    Args:
        index: path or table of an index.
        epoch: the epoch to start with (``set_epoch`` changes it).
        data: an ``ImageData`` whose ``sample_ids`` map ids to positions (without it,
            sample ids are positions).
        shuffle: a new order every epoch, seeded by ``(seed, epoch)``.
        seed: the shuffle's seed.
        num_replicas: the number of ranks sharing the subset.
        rank: this rank; it yields every ``num_replicas``-th sample from ``rank`` on.

    Raises:
        ValueError: ``num_replicas`` or ``rank`` out of range, the index breaks the
            contract, or it has no subset for ``epoch``.
        UnknownIds: the index names ids ``data`` lacks.
    """

    def __init__(self, index: str | os.PathLike | pa.Table, epoch: int = 0, *,
                 data: ImageData | None = None, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer; got {num_replicas!r}")
        if not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in 0..{num_replicas - 1}; got {rank!r}")
        self.index = read_index(index)
        self.data = data
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch``'s subset from now on (and its shuffle order).

        Args:
            epoch: an epoch of the index.

        Raises:
            ValueError: the index has no subset for ``epoch``.
        """
        ids, weights = epoch_rows(self.index, epoch)
        positions = ids if self.data is None else self.data.positions(ids)
        order = np.argsort(positions, kind="stable")
        self.epoch = epoch
        self._positions = positions[order].astype(np.int64)
        self._weights = weights[order].astype(np.float32)

    def _order(self) -> np.ndarray:
        pos = self._positions
        if self.shuffle:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
            pos = pos[rng.permutation(len(pos))]
        return pos[self.rank :: self.num_replicas]

    def __iter__(self):
        return iter(self._order().tolist())

    def __len__(self) -> int:
        n = len(self._positions)
        return n // self.num_replicas + (1 if self.rank < n % self.num_replicas else 0)

    def weights_of(self, positions) -> torch.Tensor:
        """Loss weights of the samples at ``positions`` (for example a batch's indices).

        Args:
            positions: dataset positions (array, list or tensor).

        Returns:
            A float32 tensor of weights, in the order of ``positions``.

        Raises:
            UnknownIds: a position is not in this epoch's subset.
        """
        pos = np.asarray(positions.cpu() if isinstance(positions, torch.Tensor) else positions,
                         dtype=np.int64)
        at, present = align(self._positions, pos)
        if not present.all():
            raise UnknownIds("some positions are not in this epoch's subset")
        return torch.from_numpy(self._weights[at])


class DistributedSubsetSampler(SubsetSampler):
    """``SubsetSampler`` that yields this rank's share under ``torch.distributed``.

    Args:
        index: as for ``SubsetSampler``.
        epoch: as for ``SubsetSampler``.
        data: as for ``SubsetSampler``.
        shuffle: as for ``SubsetSampler``.
        seed: as for ``SubsetSampler``.
        num_replicas: the world size (default: ``torch.distributed``'s when initialised,
            else 1).
        rank: this rank (default: ``torch.distributed``'s when initialised, else 0).
    """

    def __init__(self, index, epoch: int = 0, *, data: ImageData | None = None,
                 shuffle: bool = True, seed: int = 0, num_replicas: int | None = None,
                 rank: int | None = None) -> None:
        group_rank, group_size = current_world()
        super().__init__(index, epoch, data=data, shuffle=shuffle, seed=seed,
                         num_replicas=group_size if num_replicas is None else num_replicas,
                         rank=group_rank if rank is None else rank)
