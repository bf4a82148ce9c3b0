"""The search's cost model: measured on the runtime that serves, recorded in cost_table.json."""

from __future__ import annotations

import torch

from adarec.config import Config, ModelConfig
from adarec.nas.genotype import random_genotype
from adarec.pipeline.search import architecture_cost, saved_runtime, search_cost_model
from adarec.registry import build_model

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
