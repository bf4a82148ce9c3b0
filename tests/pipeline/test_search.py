"""The search's cost model: measured on the runtime that serves, recorded in cost_table.json."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from adarec.config import Config, ModelConfig
from adarec.nas.costs import SearchCosts
from adarec.nas.genotype import random_genotype
from adarec.pipeline.common import load_stage_data
from adarec.pipeline.search import (
    architecture_cost,
    build_supernet,
    saved_runtime,
    search_cost_model,
    search_stage,
)
from adarec.registry import build_model
from tests.conftest import tiny_config

NUM_ITEMS = 30


def _cfg(ops: str) -> Config:
    cfg = Config()
    cfg.data.max_len = 8
    cfg.search.ops = ops
    cfg.search.width = 8
    cfg.search.cells = 2
    cfg.search.budget = "1ms"
    return cfg


def _teacher() -> torch.nn.Module:
    # A budget in ms must be below the teacher's time (2-6 ms here, on a shared 2-core
    # machine) and above the cheapest student's (under 0.1 ms).
    cfg = ModelConfig(name="nextitnet", hidden_size=128, num_blocks=4)
    return build_model(cfg, NUM_ITEMS, 8)


def test_ms_budgets_of_causal_students_on_the_cpu_are_measured_on_the_compiled_step():
    cfg = _cfg("causal")
    model = search_cost_model(cfg, NUM_ITEMS, _teacher(), {"skip": {"macs": 0}})
    assert model.unit == "ms" and model.runtime == "compiled"
    assert model.op_costs["none"] == 0.0  # the compiled step skips the edge
    # The saved cost model reads back with its runtime, and the report names it.
    genotype = random_genotype("causal", cfg.search.nodes, 2, 8, 0)
    cost_file = {"method": "macs", "runtime": "compiled", "cost": model.op_costs}
    cost = architecture_cost(genotype, {**cost_file, "budget": model.to_dict()})
    assert cost["budget"]["runtime"] == "compiled"


def test_the_paper_op_set_keeps_the_torch_measurement():
    model = search_cost_model(_cfg("paper"), NUM_ITEMS, _teacher(), {"skip": {"macs": 0}})
    assert model.unit == "ms" and model.runtime == "torch" and model.cell_cost == 0.0


def test_cost_tables_saved_before_the_runtime_was_recorded_were_measured_in_torch():
    assert saved_runtime({"method": "latency", "budget": None}) == "torch"
    assert saved_runtime({"method": "macs", "budget": {"unit": "ms"}}) == "torch"
    assert saved_runtime({"method": "macs", "budget": {"unit": "macs"}}) is None
    assert saved_runtime({"method": "latency", "runtime": "compiled"}) == "compiled"


def test_the_bilevel_search_stage_steps_alpha_on_held_out_windows():
    """search_stage (what adarec search and benchmarks/profile_steps.py build): bi-level
    keeps a share of the windows out of the weights' training, and alpha steps on them."""
    cfg = tiny_config("model.name=sasrec", "search.optimization=bilevel", "search.warmup=0")
    cpu = torch.device("cpu")
    data = load_stage_data(cfg)
    num_items = data.data.num_items
    teacher = build_model(cfg.model, num_items, cfg.data.max_len)
    costs = SearchCosts.measure(cfg, num_items, teacher, cpu)
    supernet = build_supernet(cfg, num_items)
    stage, train_set = search_stage(cfg, supernet, teacher, costs, data.train, cpu)
    held_out = stage.held_out_loader.dataset
    assert len(train_set) + len(held_out) == len(data.train)
    assert not set(train_set.indices) & set(held_out.indices)
    before = [a.detach().clone() for a in supernet.alphas]
    stage.on_epoch_start(0)
    stage.train_step(next(iter(DataLoader(train_set, batch_size=8))), 0, 0)
    assert any(not torch.equal(a, b) for a, b in zip(supernet.alphas, before, strict=True))
    single = tiny_config("model.name=sasrec")
    stage, train_set = search_stage(single, supernet, teacher, costs, data.train, cpu)
    assert train_set is data.train and stage.held_out_loader is None
