"""The search's costs: measured once, written and read back as cost_table.json (every
version of the file), and asked for what the stages need."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from adarec.config import Config, ModelConfig
from adarec.errors import UserError
from adarec.nas.budget import CostModel
from adarec.nas.costs import COST_FILE, SearchCosts
from adarec.nas.genotype import Genotype, random_genotype
from adarec.registry import build_model

NUM_ITEMS = 30
MAX_LEN = 8


def _cfg(*, use_cost: bool = True, cost: str = "macs") -> Config:
    cfg = Config()
    cfg.data.max_len = MAX_LEN
    cfg.search.width = 8
    cfg.search.cells = 2
    cfg.search.use_cost = use_cost
    cfg.search.cost = cost
    return cfg


def _teacher() -> torch.nn.Module:
    model = ModelConfig(name="nextitnet", hidden_size=32, num_blocks=2)
    return build_model(model, NUM_ITEMS, MAX_LEN)


@pytest.fixture(scope="module")
def measured() -> SearchCosts:
    return SearchCosts.measure(_cfg(), NUM_ITEMS, _teacher(), "cpu")


def _cell(cfg: Config, seed: int = 0) -> Genotype:
    s = cfg.search
    return random_genotype(s.ops, s.nodes, s.cells, s.width, seed)


def test_a_budgeted_search_measures_the_table_and_the_cost_model(measured):
    assert measured.method == "macs" and measured.runtime is None  # nothing timed
    assert sum(measured.table.values()) / len(measured.table) == pytest.approx(1.0)
    model = measured.budget_model()
    assert model.unit == "macs" and model.budget == "5x"
    assert model.target == pytest.approx(model.teacher / 5)
    assert model.op_costs == {op: s["macs"] for op, s in measured.stats.items()}


def test_costs_read_back_as_written(measured, tmp_path):
    measured.write(tmp_path)
    saved = json.loads((tmp_path / COST_FILE).read_text())
    # The file's layout, which every earlier search also wrote.
    assert list(saved) == ["method", "runtime", "stats", "cost", "budget"]
    assert saved["budget"] == measured.budget.to_dict()
    again = SearchCosts.read(tmp_path)
    assert again == measured and again.source == tmp_path
    cell = _cell(_cfg())
    assert again.architecture_cost(cell) == measured.architecture_cost(cell)


def test_architecture_cost_sets_the_cell_beside_the_target(measured):
    cfg = _cfg()
    cell = _cell(cfg)
    cost = measured.architecture_cost(cell)
    table_cost = sum(measured.table[op] for node in cell.nodes for _, op in node)
    assert cost["cell_cost"] == round(table_cost, 4) and cost["table"] == measured.table
    model = measured.budget
    assert cost["budget"] == {
        "budget": "5x",
        "unit": "macs",
        "runtime": None,
        "target": model.target,
        "teacher": model.teacher,
        "modelled": model.of_genotype(cell),
        "within": model.of_genotype(cell) <= model.target,
    }


def test_a_student_budget_moves_only_the_target(measured):
    cfg = _cfg()
    model = measured.rederived("10x")
    assert model.target == pytest.approx(measured.budget.teacher / 10)
    assert model.op_costs == measured.budget.op_costs and model.budget == "10x"
    moved = measured.with_budget(model)
    assert moved.table == measured.table and measured.budget.budget == "5x"
    assert moved.architecture_cost(_cell(cfg))["budget"]["budget"] == "10x"
    measured.require_student_budget("10x", cfg.search.nodes)  # reachable: no error
    measured.require_student_budget("", cfg.search.nodes)  # none asked for
    with pytest.raises(UserError, match=r"student.budget 100000x .* at most"):
        measured.require_student_budget("100000x", cfg.search.nodes)
    with pytest.raises(UserError, match="student.budget takes a speed-up"):
        measured.rederived("2.5M")


def test_a_search_without_a_budget_has_only_the_table(tmp_path):
    cfg = _cfg(use_cost=False)
    costs = SearchCosts.measure(cfg, NUM_ITEMS, _teacher(), "cpu")
    assert costs.budget is None and costs.runtime is None
    assert "budget" not in costs.architecture_cost(_cell(cfg))
    assert costs.describe(cfg).startswith("cost table (macs, width 8, length 8):")
    with pytest.raises(UserError, match="this search has none"):
        costs.require_student_budget("5x", cfg.search.nodes)
    costs.write(tmp_path)
    with pytest.raises(UserError, match=re.escape(f"the search in {tmp_path} had no budget")):
        SearchCosts.read(tmp_path).budget_model()


def test_latency_tables_record_the_runtime_they_were_timed_on():
    cfg = _cfg(use_cost=False, cost="latency")
    costs = SearchCosts.measure(cfg, NUM_ITEMS, _teacher(), "cpu")
    assert costs.method == "latency" and costs.runtime == "compiled"  # causal ops on the CPU
    assert all("latency_ms" in s for s in costs.stats.values())


def _old_file(path: Path, method: str, budget: dict | None) -> None:
    """A cost_table.json as searches wrote it before ``runtime`` was recorded."""
    content = {"method": method, "stats": {}, "cost": {"skip": 1.0, "none": 1.0}}
    path.mkdir(parents=True, exist_ok=True)
    (path / COST_FILE).write_text(json.dumps({**content, "budget": budget}))


def test_cost_tables_of_earlier_searches_still_load(tmp_path):
    # Before max_len, runtime and cell_cost: every cell pays the whole window, in torch.
    old_model = {
        "unit": "ms",
        "fixed": 1.0,
        "op_costs": {"skip": 0.5, "none": 0.0},
        "cells": 2,
        "target": 10.0,
        "budget": "1x",
        "teacher": None,
    }
    _old_file(tmp_path / "ms", "macs", old_model)
    costs = SearchCosts.read(tmp_path / "ms")
    assert costs.runtime == "torch"  # PyTorch timed every latency then
    model = costs.budget_model()
    assert model.max_len is None and model.runtime == "torch" and model.cell_cost == 0.0
    cell = Genotype("causal", (((0, "skip"),), ((0, "skip"), (1, "none"))), 2, 8)
    cost = costs.architecture_cost(cell)
    assert cost["budget"]["modelled"] == pytest.approx(1.0 + 2 * 1.0)  # P = cells
    assert cost["budget"]["runtime"] == "torch" and cost["cell_cost"] == 3.0
    _old_file(tmp_path / "latency", "latency", None)
    assert SearchCosts.read(tmp_path / "latency").runtime == "torch"
    _old_file(tmp_path / "macs", "macs", None)
    assert SearchCosts.read(tmp_path / "macs").runtime is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"{", "not valid JSON"),
        (b'{"method": "macs"}', "no 'cost'"),
        (b'{"cost": {"skip": 1.0}, "budget": {"unit": "macs"}}', "not a cost model"),
        (b'{"cost": {"skip": 1.0}, "budget": "5x"}', "not a cost model"),
    ],
)
def test_a_damaged_cost_table_is_one_user_error_naming_it(tmp_path, content, message):
    if content is not None:
        (tmp_path / COST_FILE).write_bytes(content)
    with pytest.raises(UserError, match=f"{COST_FILE}.*{message}"):
        SearchCosts.read(tmp_path)


def test_cost_models_keep_their_fields_through_the_file(tmp_path):
    model = CostModel("ms", 2.0, {"skip": 0.1}, 2, 5.0, "1.5ms", None, 8, "compiled", 0.3)
    costs = SearchCosts("latency", {"skip": {"latency_ms": 0.1}}, {"skip": 1.0}, "compiled", model)
    costs.write(tmp_path)
    assert SearchCosts.read(tmp_path).budget == model
