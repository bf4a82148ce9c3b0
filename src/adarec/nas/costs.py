"""The search's costs, with one owner: the op cost table, what it was measured on, and
the budget's cost model.

``SearchCosts.measure`` builds them for a search, ``SearchCosts.write`` saves them as the
search's cost_table.json and ``SearchCosts.read`` loads them back: nothing else reads or
writes that file. A stage that needs the search's costs (the student's re-derivation
under ``student.budget``, the front, the random cells under the budget) asks a
``SearchCosts`` for them.

cost_table.json holds ``method`` (``search.cost``), ``runtime`` (what measured latencies
ran on), ``stats`` (each op's raw statistics), ``cost`` (the paper's mean-1 table) and
``budget`` (the cost model, null without one). Files from before ``runtime`` was recorded
load as "torch" (``saved_runtime``); cost models saved before ``max_len``, ``runtime`` or
``cell_cost`` load with the defaults of ``CostModel``, the forms they ran under.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarec.config import Config, parse_budget
from adarec.distill.cost import cost_table, format_cost_table
from adarec.errors import UserError
from adarec.io import atomic_write_json, read_json
from adarec.nas.budget import CostModel, build_cost_model, cost_unit, format_cost, serving_runtime
from adarec.nas.genotype import Genotype
from adarec.nas.operations import OP_SETS
from adarec.nas.profile import latency_cost_stats, op_cost_stats
from adarec.nas.student import Student

COST_FILE = "cost_table.json"
# The student stage's re-derivation under a tighter speed-up (``run_student``); the search
# checks it can be met before it runs.
STUDENT_BUDGET = "student.budget"
STUDENT_BUDGET_ADVICE = "lower student.budget, or remove it to retrain the search's own derivation"
_HINT = "run the search again"


def empty_genotype(cfg: Config) -> Genotype:
    """The cell of the space with every edge "none" (the cost floor of a student)."""
    s = cfg.search
    nodes = tuple(tuple((i, "none") for i in range(j + 1)) for j in range(s.nodes))
    return Genotype(s.ops, nodes, s.cells, s.width)


def _latency_stats(cfg: Config, device: torch.device | str) -> dict[str, Any]:
    """Each op's ms over a window, measured where and as the student will be served."""
    return latency_cost_stats(
        list(OP_SETS[cfg.search.ops]),
        cfg.search.width,
        cfg.data.max_len,
        device=device,
        runtime=serving_runtime(cfg.search.ops, device),
    )


def search_cost_model(
    cfg: Config, num_items: int, teacher: nn.Module, stats: dict[str, Any]
) -> CostModel:
    """The budget's cost model in real units (MACs, or ms at batch 1 on this machine, on the
    runtime that serves the student on the teacher's device: ``serving_runtime``);
    ``stats``: the op statistics already measured (measured again in the budget's unit
    when they lack it)."""
    budget = parse_budget(cfg.search.budget)
    unit = cost_unit(budget, cfg.search.cost)
    device = next(teacher.parameters()).device
    if unit == "ms" and "latency_ms" not in next(iter(stats.values())):
        stats = _latency_stats(cfg, device)
    elif unit == "macs" and "macs" not in next(iter(stats.values())):
        stats = op_cost_stats(OP_SETS[cfg.search.ops], cfg.search.width, cfg.data.max_len)
    # Built as the student stage builds it: positions cost time per served position.
    empty = Student(
        num_items,
        cfg.data.max_len,
        empty_genotype(cfg),
        cfg.search.dropout,
        positions=cfg.student.positions,
    )
    return build_cost_model(
        budget,
        cfg.search.cost,
        stats,
        empty.to(device),
        cfg.search.cells,
        cfg.search.nodes,
        num_items,
        cfg.data.max_len,
        teacher,
        runtime=serving_runtime(cfg.search.ops, device),
    )


def saved_runtime(content: dict[str, Any]) -> str | None:
    """The runtime a saved cost_table.json's latencies were measured on: "torch" for files
    written before it was recorded (PyTorch measured them all); None when it holds MACs."""
    if "runtime" in content:
        return content["runtime"]
    budget = content.get("budget") or {}
    measured = content.get("method") == "latency" or budget.get("unit") == "ms"
    return "torch" if measured else None


@dataclass
class SearchCosts:
    """The costs a search ran under; see the module docstring."""

    method: str  # search.cost: "macs" or "latency"
    stats: dict[str, dict[str, float]]  # each op's raw statistics
    table: dict[str, float]  # the paper's mean-1 cost per op
    runtime: str | None  # what measured latencies ran on; None: no latency measured
    budget: CostModel | None = None  # None: a search without a budget
    # The search directory read from (named in errors); not saved.
    source: Path | None = dataclasses.field(default=None, compare=False)

    @classmethod
    def measure(
        cls, cfg: Config, num_items: int, teacher: nn.Module, device: torch.device | str
    ) -> SearchCosts:
        """The costs of a search of ``cfg``: the op table at its width and length (latency:
        on ``device``, on the runtime that serves there) and, for a budgeted search
        (``search.use_cost`` and a cost form other than "paper"), the budget's cost model
        against ``teacher``."""
        s = cfg.search
        if s.cost == "latency":
            stats = _latency_stats(cfg, device)
        else:
            stats = op_cost_stats(OP_SETS[s.ops], s.width, cfg.data.max_len, s.ops)
        budget = None
        if s.use_cost and s.cost_form != "paper":
            budget = search_cost_model(cfg, num_items, teacher, stats)
        if budget is not None and budget.unit == "ms":
            runtime = budget.runtime
        elif s.cost == "latency":
            runtime = serving_runtime(s.ops, device)
        else:
            runtime = None
        return cls(s.cost, stats, cost_table(stats), runtime, budget)

    @classmethod
    def from_dict(cls, content: dict[str, Any], source: Path | None = None) -> SearchCosts:
        """The costs of a cost_table.json's content (files of every version)."""
        budget = content.get("budget")
        return cls(
            method=content.get("method", "macs"),
            stats=content.get("stats", {}),
            table=content["cost"],
            runtime=saved_runtime(content),
            budget=CostModel(**budget) if budget else None,
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            # What measured latencies ran on ("torch" or "compiled"; none measured: null).
            # Files written before this key: "torch" (``saved_runtime``).
            "runtime": self.runtime,
            "stats": self.stats,
            "cost": self.table,
            "budget": None if self.budget is None else self.budget.to_dict(),
        }

    @classmethod
    def read(cls, search_dir: Path) -> SearchCosts:
        """The costs saved by the search in ``search_dir``; UserError naming the file when it
        is missing or damaged."""
        path = Path(search_dir) / COST_FILE
        content = read_json(path, dict, _HINT)
        if "cost" not in content:
            raise UserError(f"{path} is damaged: no 'cost'; {_HINT}")
        try:
            return cls.from_dict(content, Path(search_dir))
        except (TypeError, AttributeError):  # a budget that is not the cost model's fields
            raise UserError(f"{path} is damaged: its budget is not a cost model; {_HINT}") from None

    def write(self, search_dir: Path) -> None:
        atomic_write_json(Path(search_dir) / COST_FILE, self.to_dict())

    def budget_model(self) -> CostModel:
        """The budget's cost model; UserError for a search without one."""
        if self.budget is None:
            where = "" if self.source is None else f" in {self.source}"
            raise UserError(f"the search{where} had no budget (search.use_cost false?)")
        return self.budget

    def rederived(self, budget: str) -> CostModel:
        """The cost model with its target moved to ``budget`` (``student.budget``: a
        speed-up over the teacher)."""
        return self.budget_model().with_speedup(budget, STUDENT_BUDGET)

    def with_budget(self, model: CostModel) -> SearchCosts:
        """These costs under another cost model (a re-derivation's, ``rederived``)."""
        return dataclasses.replace(self, budget=model)

    def require_student_budget(self, budget: str, nodes: int) -> None:
        """UserError, before any training, when ``student.budget`` cannot be met: a search
        without a cost model, or a speed-up below the cheapest cell of the space."""
        if not budget:
            return
        if self.budget is None:
            raise UserError(
                f"{STUDENT_BUDGET} re-derives the student under the search's cost model, and "
                "this search has none (search.use_cost false or search.cost_form paper); "
                f"{STUDENT_BUDGET_ADVICE}"
            )
        self.rederived(budget).require_reachable(nodes, STUDENT_BUDGET, STUDENT_BUDGET_ADVICE)

    def describe(self, cfg: Config) -> str:
        """One log message: the budget against the teacher and the cheapest student, or,
        without a budget, the cost table."""
        model = self.budget
        if model is None:
            return (
                f"cost table ({cfg.search.cost}, width {cfg.search.width}, length "
                f"{cfg.data.max_len}):\n{format_cost_table(self.table)}"
            )
        teacher = "-" if model.teacher is None else format_cost(model.teacher, model.unit)
        return (
            f"budget {model.budget}: target {format_cost(model.target, model.unit)} per "
            f"history (teacher {teacher}, student floor "
            f"{format_cost(model.cheapest(cfg.search.nodes), model.unit)})"
        )

    def architecture_cost(self, genotype: Genotype) -> dict[str, Any]:
        """A derived cell's cost: the paper table's cell cost and, with a budget, the
        modelled cost per history beside the target."""
        total = sum(self.table[op] for node in genotype.nodes for _, op in node)
        result: dict[str, Any] = {"cell_cost": round(total, 4), "table": self.table}
        model = self.budget
        if model is not None:
            modelled = model.of_genotype(genotype)
            result["budget"] = {
                "budget": model.budget,
                "unit": model.unit,
                "runtime": self.runtime,
                "target": model.target,
                "teacher": model.teacher,
                "modelled": modelled,
                "within": model.within(modelled),
            }
        return result
