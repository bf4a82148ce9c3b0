"""MACs, parameter counts and latency of models and ops."""

import pytest
import torch
from torch import nn

from adarec.nas.operations import OP_SETS
from adarec.nas.profile import count_macs, latency_cost_stats, op_cost_stats


def test_count_macs_of_a_linear_layer():
    layer = nn.Linear(4, 3)
    assert count_macs(layer, torch.randn(2, 4)) == 2 * 4 * 3


def test_conv_macs_are_kernel_times_channels_squared_times_length():
    stats = op_cost_stats(["causal_conv3", "causal_dil_conv5"], width=8, length=10)
    assert stats["causal_conv3"] == {"macs": 3 * 8 * 8 * 10, "params": 3 * 8 * 8 + 2 * 8}
    assert stats["causal_dil_conv5"]["macs"] == 5 * 8 * 8 * 10


@pytest.mark.parametrize("op_set", list(OP_SETS))
def test_op_costs_rank_k5_convs_above_k3_convs_above_pools_skip_none(op_set):
    names = OP_SETS[op_set]
    stats = op_cost_stats(names, width=16, length=12, op_set=op_set)
    assert list(stats) == list(names)
    k5 = [n for n in names if n.endswith("conv5")]
    k3 = [n for n in names if n.endswith("conv3")]
    cheap = [n for n in names if "pool" in n or n in ("skip", "none")]
    assert len(k5) + len(k3) + len(cheap) == len(names)
    for key in ("macs", "params"):
        assert min(stats[n][key] for n in k5) > max(stats[n][key] for n in k3)
        assert min(stats[n][key] for n in k3) > max(stats[n][key] for n in cheap)


def test_latency_cost_stats_builds_the_ops_of_the_zoo():
    names = OP_SETS["causal"]
    stats = latency_cost_stats(names, width=8, length=6, repeats=2, warmup=0)
    assert list(stats) == list(names)
    assert all(s["latency_ms"] >= 0 for s in stats.values())


def test_compiled_op_latency_ranks_convs_above_pools_and_none_free():
    names = list(OP_SETS["causal"])
    stats = latency_cost_stats(names, width=64, length=20, repeats=9, warmup=1, runtime="compiled")
    assert list(stats) == names
    assert stats["none"]["latency_ms"] == 0.0
    convs = [stats[n]["latency_ms"] for n in names if "conv" in n]
    cheap = [stats[n]["latency_ms"] for n in names if "pool" in n or n == "skip"]
    assert min(convs) > max(cheap) >= 0.0


def test_compiled_latency_needs_the_zoo_on_the_cpu():
    with pytest.raises(ValueError, match="compiled runtime"):
        latency_cost_stats(["skip"], 8, 6, device="meta", runtime="compiled")
