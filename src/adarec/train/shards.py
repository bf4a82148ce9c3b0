"""Which training windows each process reads, and in what order.

Under torchrun each rank builds the training windows of its own shard of the users only
(``PreparedData.shard``: about 1/world of the interactions, views of the memory-mapped
cache), so no rank holds the windows of the whole log. Shards differ in size by a few
windows, and DDP needs the same number of steps on every rank: ``ShardSampler`` shuffles
the rank's own windows each epoch and wraps around to the largest shard's count, as
``DistributedSampler`` pads a global split. One process (world 1) keeps
``DistributedSampler`` and its order, so single-process runs are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler, Subset
from torch.utils.data.distributed import DistributedSampler

from adarec.runtime import distributed as dist


class ShardSampler(Sampler[int]):
    """All of a rank's own windows each epoch, shuffled with ``seed + epoch``, then the
    first ones again up to ``common`` (the largest shard's size)."""

    def __init__(self, size: int, common: int, seed: int) -> None:
        if not 0 < size <= common:
            raise ValueError(f"a shard of {size} windows cannot fill {common}")
        self.size, self.common, self.seed, self.epoch = size, common, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        repeats = -(-self.common // self.size)
        return iter(order.repeat(repeats)[: self.common].tolist())

    def __len__(self) -> int:
        return self.common


def is_rank_shard(dataset: Dataset) -> bool:
    """Whether ``dataset`` (or the dataset a ``Subset`` takes from) holds only this rank's
    shard of the users."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return getattr(dataset, "shard", None) == (dist.rank(), dist.world_size())


def rank_sampler(dataset: Dataset, seed: int) -> DistributedSampler | ShardSampler:
    """The sampler of this rank: its own shard's windows when the data is sharded (a
    collective call under torchrun: every rank must make it), else its part of a
    global split."""
    if dist.world_size() > 1 and is_rank_shard(dataset):
        sizes = dist.all_gather_objects(len(dataset))
        if min(sizes) == 0:
            raise ValueError(f"a rank has no training windows (windows per rank: {sizes})")
        return ShardSampler(len(dataset), max(sizes), seed)
    # DistributedSampler also serves the single-process case: it shuffles with seed + epoch,
    # which makes every epoch's order reproducible and resumable.
    return DistributedSampler(
        dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=True, seed=seed
    )
