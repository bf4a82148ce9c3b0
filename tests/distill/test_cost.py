import math

import pytest
import torch
from torch import nn

from adarec.distill.cost import (
    cost_loss,
    cost_table,
    format_cost_table,
    latency_cost_table,
)
from adarec.nas.profile import latency_cost_stats

WIDTH, LENGTH = 64, 50
K3 = ["conv_k3", "dil_conv_k3", "causal_dil_conv_k3"]
K5 = ["conv_k5", "dil_conv_k5", "causal_dil_conv_k5"]
FREE = ["max_pool_k3", "avg_pool_k3", "skip", "none"]


def _paper_stats() -> dict[str, dict[str, int]]:
    params = {**dict.fromkeys(K3, WIDTH * WIDTH * 3), **dict.fromkeys(K5, WIDTH * WIDTH * 5)}
    params.update(dict.fromkeys(FREE, 0))
    return {op: {"macs": p * LENGTH, "params": p} for op, p in params.items()}


def test_cost_table_orders_k5_over_k3_over_free_ops_with_mean_one():
    table = cost_table(_paper_stats())
    assert math.isclose(sum(table.values()) / len(table), 1.0)
    assert len({table[op] for op in K3}) == len({table[op] for op in K5}) == 1
    assert len({table[op] for op in FREE}) == 1
    assert table["conv_k5"] > table["conv_k3"] > table["skip"] > 0
    # Standardised: k3 0.285, k5 1.234, free -1.139 (std 8,631) -> 0.854, 2.206, 0.206.
    assert table["conv_k3"] == pytest.approx(0.854, abs=1e-3)
    assert table["conv_k5"] == pytest.approx(2.206, abs=1e-3)
    assert table["none"] == pytest.approx(0.206, abs=1e-3)


def test_cost_table_averages_the_metrics_and_is_uniform_for_equal_values():
    assert cost_table({"a": {"macs": 5, "params": 1}, "b": {"macs": 5, "params": 1}}) == {
        "a": 1.0,
        "b": 1.0,
    }
    # MACs equal (uniform 1, 1), params differ (softmax(1, -1) * 2): the mean of the two.
    table = cost_table({"a": {"macs": 5, "params": 3}, "b": {"macs": 5, "params": 1}})
    heavy = 2 / (1 + math.exp(-2))
    assert table["a"] == pytest.approx((1 + heavy) / 2)
    assert table["b"] == pytest.approx((1 + 2 - heavy) / 2)


def test_cost_table_needs_a_known_metric():
    with pytest.raises(ValueError, match="macs"):
        cost_table({"a": {"flops": 1}})


def _slow_op() -> nn.Module:
    return nn.Sequential(*[nn.Linear(128, 128) for _ in range(8)])


def test_latency_cost_table_ranks_a_heavy_op_above_a_trivial_one():
    ops = {"identity": nn.Identity(), "heavy": _slow_op()}
    stats = latency_cost_stats(list(ops), width=128, length=64, repeats=5, warmup=1, ops=ops)
    assert set(stats) == {"identity", "heavy"}
    assert stats["heavy"]["latency_ms"] > stats["identity"]["latency_ms"] > 0
    table = latency_cost_table(stats)
    assert table["heavy"] > 1 > table["identity"]
    assert cost_table(stats) == table  # cost_table accepts latency statistics too


def test_cost_loss_is_the_sum_of_sampled_costs_with_gradient():
    costs = torch.tensor([0.5, 2.0, 0.25])
    samples = [
        torch.tensor([[0.0, 1.0, 0.0]], requires_grad=True),
        torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True),
    ]
    loss = cost_loss(samples, costs)
    assert loss.item() == pytest.approx(2.0 + 0.5 + 0.25)
    loss.backward()
    assert torch.equal(samples[0].grad, costs.expand(1, 3))
    assert torch.equal(samples[1].grad, costs.expand(2, 3))


def test_format_cost_table_lists_every_op():
    text = format_cost_table({"conv_k5": 2.2061, "skip": 0.2})
    assert text.splitlines() == ["conv_k5  2.206", "skip     0.200"]
