"""The per-rank sampler: every own window each epoch, equal counts, one process unchanged."""

import pytest
import torch
from torch.utils.data import Subset
from torch.utils.data.distributed import DistributedSampler

from adarec.data.splits import TrainWindows
from adarec.train.shards import ShardSampler, is_rank_shard, rank_sampler


def test_a_shard_is_read_whole_each_epoch_then_wrapped_to_the_common_count():
    sampler = ShardSampler(size=7, common=10, seed=4)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == 10
        assert sorted(order[:7]) == list(range(7))  # every window once ...
        assert order[7:] == order[:3]  # ... then the first ones again
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    sampler.set_epoch(1)
    assert list(sampler) == orders[1]  # reproducible: a resumed epoch reads the same order


def test_a_shard_much_smaller_than_the_largest_repeats_whole():
    order = list(ShardSampler(size=3, common=8, seed=0))
    assert order[:3] == order[3:6] == order[6:] + [order[2]]


@pytest.mark.parametrize(("size", "common"), [(0, 4), (5, 4)])
def test_a_shard_that_cannot_fill_the_count_is_refused(size, common):
    with pytest.raises(ValueError, match="cannot fill"):
        ShardSampler(size, common, 0)


def test_one_process_keeps_the_distributed_samplers_order():
    windows = TrainWindows(torch.arange(30).reshape(10, 3).numpy())
    sampler = rank_sampler(windows, seed=5)
    reference = DistributedSampler(windows, num_replicas=1, rank=0, shuffle=True, seed=5)
    for epoch in (0, 2):
        sampler.set_epoch(epoch)
        reference.set_epoch(epoch)
        assert list(sampler) == list(reference)


def test_only_windows_marked_as_this_ranks_shard_count_as_sharded():
    windows = torch.zeros(4, 3, dtype=torch.long).numpy()
    assert is_rank_shard(TrainWindows(windows, shard=(0, 1)))
    assert is_rank_shard(Subset(Subset(TrainWindows(windows, shard=(0, 1)), [0, 1]), [0]))
    assert not is_rank_shard(TrainWindows(windows))
    assert not is_rank_shard(TrainWindows(windows, shard=(1, 2)))  # another rank's
