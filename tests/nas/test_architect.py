"""The architect: the budget's cost term, warm-up, entropy ramp, and a search that buys accuracy."""

from __future__ import annotations

import json
import math

import pytest
import torch

from adarec.config import SearchConfig
from adarec.nas.architect import Architect, budget_penalty, mean_entropy
from adarec.nas.budget import CostModel
from adarec.nas.operations import CAUSAL_OPS
from adarec.nas.supernet import Supernet
from adarec.pipeline.search import run_search
from adarec.pipeline.teacher import train_teacher
from tests.conftest import tiny_config


def test_budget_penalty_uses_the_under_and_over_elasticities():
    task = torch.tensor(2.0)
    under = budget_penalty(torch.tensor(50.0), 100.0, task, "budget", 0.07, 1.0)
    assert float(budget_penalty(torch.tensor(50.0), 100.0, task)) == 0.0  # hard form default
    over = budget_penalty(torch.tensor(200.0), 100.0, task, "budget", 0.07, 1.0)
    assert float(under) == pytest.approx(2.0 * 0.07 * math.log(0.5))
    assert float(over) == pytest.approx(2.0 * 1.0 * math.log(2.0))
    assert float(budget_penalty(torch.tensor(100.0), 100.0, task)) == pytest.approx(0.0)
    # TuNAS's absolute form penalises both sides alike.
    low = budget_penalty(torch.tensor(50.0), 100.0, task, "absolute", 0.07, 1.0)
    high = budget_penalty(torch.tensor(150.0), 100.0, task, "absolute", 0.07, 1.0)
    assert float(low) == pytest.approx(float(high)) == pytest.approx(1.0)


def test_budget_penalty_gated_on_the_derived_cell():
    """With a gate, the derived cell's cost picks the weight; the gradient is E[C]'s."""
    task = torch.tensor(2.0)
    expected = torch.tensor(230.0, requires_grad=True)  # a near-uniform start, over target
    silent = budget_penalty(expected, 100.0, task, "budget", 0.0, 1.0, gate=90.0)
    assert float(silent.detach()) == 0.0
    active = budget_penalty(expected, 100.0, task, "budget", 0.0, 1.0, gate=120.0)
    assert float(active.detach()) == pytest.approx(2.0 * math.log(2.3))
    active.backward()
    assert float(expected.grad) == pytest.approx(2.0 / 230.0)
    # Without a gate the expected cost decides (the earlier behaviour).
    assert float(budget_penalty(expected, 100.0, task, "budget", 0.0, 1.0)) > 0


def test_architect_cost_term_is_silent_while_the_derived_cell_fits():
    """Over-budget expected cost but a derived cell within the target: no cost gradient
    (cost_gate=derived); with cost_gate=expected the same alphas get one."""
    net = Supernet(20, 8, 8, 2, 2)
    ops = net.op_names
    conv, pool = ops.index("causal_conv5"), ops.index("causal_max_pool3")
    with torch.no_grad():
        for a in net.alphas:
            a.zero_()
            a[:, pool] = 0.5  # argmax: pools everywhere, but every conv still has mass
    costs = {op: (1000.0 if "conv" in op else 0.0) for op in ops}
    model = CostModel("macs", 10.0, costs, 2, target=1500.0, budget="test")
    assert float(model.expected(list(net.alphas), ops, reach=2)) > model.target
    for gate, moves in (("derived", False), ("expected", True)):
        cfg = SearchConfig(epochs=4, warmup=0.0, entropy=0.0, cost_gate=gate)
        architect = Architect(net, cfg, seed=0, cost_model=model)
        assert architect.derived_cost() == pytest.approx(10.0)
        architect.zero_grad()
        penalty = architect.penalty(torch.tensor(1.0), [], epoch=0)
        penalty.backward()
        grad = net.alphas[0].grad
        assert (grad is not None and float(grad[:, conv].abs().sum()) > 0) == moves
        # The argmax turning into a convolution on one edge puts the derived cell over.
        with torch.no_grad():
            net.alphas[0][0, conv] = 1.0
        assert architect.derived_cost() > model.target
        with torch.no_grad():
            net.alphas[0][0, conv] = 0.0


def test_budget_penalty_scales_with_the_task_loss_but_sends_it_no_gradient():
    task = torch.tensor(3.0, requires_grad=True)
    expected = torch.tensor(300.0, requires_grad=True)
    penalty = budget_penalty(expected, 100.0, task)
    penalty.backward()
    assert task.grad is None
    # d/dE of 3 * log(E / 100) at E = 300.
    assert float(expected.grad) == pytest.approx(3.0 / 300.0)


def _architect(**options) -> tuple[Supernet, Architect]:
    net = Supernet(20, 8, 8, 2, 2)
    cfg = SearchConfig(epochs=8, use_cost=False, **options)
    return net, Architect(net, cfg, seed=0)


def test_alpha_is_frozen_during_the_warm_up():
    net, architect = _architect(warmup=0.25)
    before = [a.detach().clone() for a in net.alphas]
    for a in net.alphas:
        a.grad = torch.ones_like(a)
    architect.step(epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(net.alphas, before, strict=True))
    architect.step(epoch=2)
    assert not all(torch.equal(a, b) for a, b in zip(net.alphas, before, strict=True))


def test_entropy_weight_ramps_up_after_the_warm_up():
    _, architect = _architect(warmup=0.25, entropy=2.0)
    weights = [architect.entropy_weight(e) for e in range(8)]
    assert weights[:2] == [0.0, 0.0]
    assert weights[-1] == pytest.approx(2.0)
    assert all(b > a for a, b in zip(weights[1:], weights[2:], strict=False))


def test_entropy_term_sharpens_the_leading_op():
    net, architect = _architect(warmup=0.0, entropy=2.0, alpha_lr=0.05)
    with torch.no_grad():
        for a in net.alphas:
            a.zero_()
            a[:, 3] = 0.1  # a slight lead
    for _ in range(50):
        architect.zero_grad()
        architect.penalty(torch.tensor(1.0), [], epoch=7).backward()
        architect.step(epoch=7)
    probs = torch.softmax(net.alphas[0].detach(), dim=-1)
    assert probs[0, 3] > 0.5
    assert float(mean_entropy(net.alphas).detach()) < math.log(8) / 2


def test_search_prefers_a_convolution_on_the_order_scene(tmp_path):
    """Fixed seed, tiny order-pattern scene: where the budget allows a convolution, the
    search puts more probability on convolutions than on pools for the cell input edge."""
    cfg = tiny_config(
        "data.synthetic_pattern=order",
        "data.synthetic_users=300",
        "data.synthetic_items=20",
        "data.synthetic_length=20",
        "model.name=sasrec",
        "model.hidden_size=32",
        "train.epochs=8",
        "train.lr=0.005",
        "search.epochs=12",
        "search.batch_size=16",
        "search.lr=0.01",
        "search.width=16",
    )
    train_teacher(cfg, tmp_path / "teacher", quiet=True)
    metrics = run_search(cfg, tmp_path / "search", tmp_path / "teacher", quiet=True)
    assert metrics["cost"]["budget"]["within"]
    ops = [e["op"] for node in metrics["architecture"]["nodes"] for e in node]
    assert any("conv" in op for op in ops)
    history = json.loads((tmp_path / "search" / "history.json").read_text())
    # alpha's terms are logged as one "penalty" (cost and entropy ramp), not as a "cost"
    # that would read as over budget while the cell is within it
    assert history[-1]["penalty"] > 0 and "cost" not in history[-1]
    edge = history[-1]["alpha_probs"][0]  # cell_input -> node_0
    names = CAUSAL_OPS
    conv = sum(p for n, p in zip(names, edge["probs"], strict=True) if "conv" in n)
    pool = sum(p for n, p in zip(names, edge["probs"], strict=True) if "pool" in n)
    assert conv > pool


def test_paper_form_is_beta_times_the_sampled_one_hot_costs():
    net = Supernet(20, 8, 8, 2, 2)
    table = {op: float(k) for k, op in enumerate(net.op_names)}
    cfg = SearchConfig(epochs=4, cost_form="paper", beta=8.0, warmup=0.0, entropy=0.0)
    architect = Architect(net, cfg, seed=0, paper_costs=table)
    samples = architect.sample(epoch=0, step=0)
    chosen = sum(float(table[net.op_names[int(k)]]) for s in samples for k in s.argmax(-1))
    penalty = architect.penalty(torch.tensor(5.0), samples, epoch=0)
    assert float(penalty.detach()) == pytest.approx(8.0 * chosen)
