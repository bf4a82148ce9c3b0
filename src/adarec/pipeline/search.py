"""Architecture search guided by a trained teacher, then derivation of the student cell."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from adarec.config import Config, parse_budget
from adarec.distill.cost import cost_table, format_cost_table
from adarec.errors import UserError
from adarec.io import atomic_write_json, atomic_write_text, read_json
from adarec.models.teacher_protocol import check_teacher
from adarec.nas.architect import Architect
from adarec.nas.budget import (
    CostModel,
    build_cost_model,
    cost_unit,
    derive_within_budget,
    format_cost,
    serving_runtime,
)
from adarec.nas.genotype import (
    Genotype,
    draw_genotype,
    genotype_to_dict,
    genotype_to_text,
    save_genotype,
)
from adarec.nas.operations import OP_SETS
from adarec.nas.profile import latency_cost_stats, op_cost_stats
from adarec.nas.student import Student
from adarec.nas.supernet import Supernet
from adarec.pipeline.common import StageData
from adarec.pipeline.stage import StageRun
from adarec.plots import plot_alpha_history
from adarec.runs import load_run_model, relative_to_run
from adarec.runtime import distributed as dist
from adarec.train.distill_stage import DistillStage

log = logging.getLogger("adarec")

SUPERNET_FILE = "supernet.pt"
# The student stage's re-derivation under a tighter speed-up (``run_student``); the search
# checks it can be met before it runs.
STUDENT_BUDGET = "student.budget"
STUDENT_BUDGET_ADVICE = "lower student.budget, or remove it to retrain the search's own derivation"
HELD_OUT_FRACTION = 0.2  # bi-level search: share of training windows kept for alpha


def build_supernet(cfg: Config, num_items: int) -> Supernet:
    s = cfg.search
    return Supernet(
        num_items,
        cfg.data.max_len,
        s.width,
        s.cells,
        s.nodes,
        op_set=s.ops,
        dropout=s.dropout,
        mode=s.mode,
        alpha_init_std=s.alpha_init_std,
    )


def search_costs(
    cfg: Config, device: torch.device | str = "cpu"
) -> tuple[dict[str, float], dict[str, Any]]:
    """The paper's mean-1 cost table at this run's width and length, and its raw stats
    (latency: on ``device``, on the runtime that serves there, ``serving_runtime``)."""
    ops = OP_SETS[cfg.search.ops]
    if cfg.search.cost == "latency":
        stats = _latency_stats(cfg, device)
    else:
        stats = op_cost_stats(ops, cfg.search.width, cfg.data.max_len, cfg.search.ops)
    return cost_table(stats), stats


def _latency_stats(cfg: Config, device: torch.device | str) -> dict[str, Any]:
    """Each op's ms over a window, measured where and as the student will be served."""
    runtime = serving_runtime(cfg.search.ops, device)
    return latency_cost_stats(
        list(OP_SETS[cfg.search.ops]),
        cfg.search.width,
        cfg.data.max_len,
        device=device,
        runtime=runtime,
    )


def empty_genotype(cfg: Config) -> Genotype:
    """The cell of the space with every edge "none" (the cost floor of a student)."""
    s = cfg.search
    nodes = tuple(tuple((i, "none") for i in range(j + 1)) for j in range(s.nodes))
    return Genotype(s.ops, nodes, s.cells, s.width)


def search_cost_model(
    cfg: Config, num_items: int, teacher: torch.nn.Module, stats: dict[str, Any]
) -> CostModel:
    """The budget's cost model in real units (MACs, or ms at batch 1 on this machine, on the
    runtime that serves the student on the teacher's device: ``serving_runtime``)."""
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


def _split_held_out(windows: torch.utils.data.Dataset, seed: int):
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=generator).tolist()
    cut = max(1, int(len(order) * HELD_OUT_FRACTION))
    return (
        torch.utils.data.Subset(windows, order[cut:]),
        torch.utils.data.Subset(windows, order[:cut]),
    )


def distilled_teacher(
    teacher_dir: Path | None,
    teacher: torch.nn.Module | None,
    stage_data: StageData,
    max_len: int,
    device: torch.device,
) -> torch.nn.Module:
    """The teacher a stage distils: the trained teacher of ``teacher_dir`` (its data is
    checked by the stage, as ``StageRun``'s ``data_of``), or ``teacher``, a user's module
    checked against the ``TeacherProtocol``."""
    if (teacher is None) == (teacher_dir is None):
        raise ValueError("give one of a teacher run directory and a teacher module")
    if teacher is not None:
        teacher.to(device)
        check_teacher(teacher, stage_data.data.num_items, max_len)
        return teacher
    model, spec = load_run_model(teacher_dir, device)
    if spec["model"]["name"] == "pop":
        raise UserError("the popularity baseline cannot be a teacher; train a sequential model")
    return model


def run_search(
    cfg: Config,
    run_dir: Path,
    teacher_dir: Path | None,
    quiet: bool = False,
    resume: bool = False,
    teacher: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Search a student cell for this scene; writes genotype.json/.txt/.png and supernet.pt.

    The teacher is the trained one in ``teacher_dir``, or ``teacher`` (then ``teacher_dir``
    is None): any module that follows ``adarec.models.teacher_protocol.TeacherProtocol``.
    """
    run = StageRun(cfg, run_dir, resume, quiet, data_of=teacher_dir)
    teacher = distilled_teacher(teacher_dir, teacher, run.data, cfg.data.max_len, run.device)
    if dist.is_main():
        # A module given in Python cannot be found again from the run: retraining with
        # KD needs it given again.
        record = (
            {"run_dir": None, "module": type(teacher).__qualname__}
            if teacher_dir is None
            else {"run_dir": relative_to_run(teacher_dir, run.run_dir)}
        )
        atomic_write_json(run.run_dir / "teacher.json", record)
    costs, cost_model = _costs_and_budget(cfg, run, teacher)

    run.start_clock()  # measuring the ops and the budget above is not training time
    supernet = build_supernet(cfg, run.data.data.num_items).to(run.device)
    train_set, held_out = run.data.train, None
    if cfg.search.optimization == "bilevel":
        train_set, held_out = _split_held_out(run.data.train, cfg.seed)
    architect = Architect(supernet, cfg.search, cfg.seed, cost_model, costs)
    stage = DistillStage(
        supernet,
        teacher,
        cfg.search,
        cfg.search,
        run.device,
        cfg.seed,
        architect=architect,
        held_out=held_out,
        amp=cfg.amp,
    )
    # The architecture is derived from the final alpha (no early stopping in the search);
    # validation is still computed every epoch to watch the derived cell.
    run.train(stage, cfg.search, "search", train_set=train_set, select_on_valid=False)
    genotype = _derive(supernet, cost_model, run)
    cost = architecture_cost(genotype, read_json(run.run_dir / "cost_table.json"))
    extra = {"architecture": genotype_to_dict(genotype), "cost": cost}
    return run.finish(supernet, "supernet", "architecture search", extra, SUPERNET_FILE)


def _costs_and_budget(
    cfg: Config, run: StageRun, teacher: torch.nn.Module
) -> tuple[dict[str, float], CostModel | None]:
    """The op cost table and, for a budgeted search, its cost model; both in cost_table.json."""
    costs, stats = search_costs(cfg, run.device)
    cost_model = None
    if cfg.search.use_cost and cfg.search.cost_form != "paper":
        # Measured latencies differ per process: every rank uses rank 0's model.
        cost_model = dist.broadcast_object(
            search_cost_model(cfg, run.data.data.num_items, teacher, stats)
        )
        log.info(
            "budget %s: target %s per history (teacher %s, student floor %s)",
            cost_model.budget,
            format_cost(cost_model.target, cost_model.unit),
            "-" if cost_model.teacher is None else format_cost(cost_model.teacher, cost_model.unit),
            format_cost(cost_model.cheapest(cfg.search.nodes), cost_model.unit),
        )
        if cfg.student.budget:
            # Found now, not after the search: the student stage derives under it.
            cost_model.with_speedup(cfg.student.budget, STUDENT_BUDGET).require_reachable(
                cfg.search.nodes, STUDENT_BUDGET, STUDENT_BUDGET_ADVICE
            )
    elif cfg.student.budget:
        raise UserError(
            f"{STUDENT_BUDGET} re-derives the student under the search's cost model, and "
            "this search has none (search.use_cost false or search.cost_form paper); "
            f"{STUDENT_BUDGET_ADVICE}"
        )
    else:
        costs = dist.broadcast_object(costs)
        log.info(
            "cost table (%s, width %d, length %d):\n%s",
            cfg.search.cost,
            cfg.search.width,
            cfg.data.max_len,
            format_cost_table(costs),
        )
    if dist.is_main():
        atomic_write_json(
            run.run_dir / "cost_table.json",
            {
                "method": cfg.search.cost,
                # What measured latencies ran on ("torch" or "compiled"; none measured:
                # null). Files written before this key: "torch" (``saved_runtime``).
                "runtime": _measured_runtime(cfg, run.device, cost_model),
                "stats": stats,
                "cost": costs,
                "budget": None if cost_model is None else cost_model.to_dict(),
            },
        )
    return costs, cost_model


def _measured_runtime(
    cfg: Config, device: torch.device, cost_model: CostModel | None
) -> str | None:
    if cost_model is not None and cost_model.unit == "ms":
        return cost_model.runtime
    if cfg.search.cost == "latency":
        return serving_runtime(cfg.search.ops, device)
    return None


def saved_runtime(cost_file: dict[str, Any]) -> str | None:
    """The runtime a saved cost_table.json's latencies were measured on: "torch" for files
    written before it was recorded (PyTorch measured them all); None when it holds MACs."""
    if "runtime" in cost_file:
        return cost_file["runtime"]
    budget = cost_file.get("budget") or {}
    measured = cost_file.get("method") == "latency" or budget.get("unit") == "ms"
    return "torch" if measured else None


def _derive(supernet: Supernet, cost_model: CostModel | None, run: StageRun) -> Genotype:
    """The supernet's cell, repaired to meet the budget; written as genotype.json/.txt/.png,
    beside the architecture weights over the search (alphas.png)."""
    genotype = supernet.genotype()
    if cost_model is not None:
        alphas = list(supernet.alphas)
        genotype, changes = derive_within_budget(alphas, supernet.op_names, genotype, cost_model)
        for change in changes:
            log.info("derivation: %s", change)
    text = genotype_to_text(genotype)
    log.info("derived cell:\n%s", text)
    if dist.is_main():
        save_genotype(genotype, run.run_dir / "genotype.json")
        atomic_write_text(run.run_dir / "genotype.txt", text + "\n")
        draw_genotype(genotype, run.run_dir / "genotype.png")
        plot_alpha_history(run.history, supernet.op_names, run.run_dir / "alphas.png")
    return genotype


def architecture_cost(genotype: Genotype, cost_file: dict[str, Any]) -> dict[str, Any]:
    """The derived cell's cost: the paper table's cell cost and, with a budget, the
    modelled cost per history beside the target (``cost_file``: cost_table.json)."""
    costs = cost_file["cost"]
    total = sum(costs[op] for node in genotype.nodes for _, op in node)
    result: dict[str, Any] = {"cell_cost": round(total, 4), "table": costs}
    if cost_file.get("budget"):
        model = CostModel(**cost_file["budget"])
        modelled = model.of_genotype(genotype)
        result["budget"] = {
            "budget": model.budget,
            "unit": model.unit,
            "runtime": saved_runtime(cost_file),
            "target": model.target,
            "teacher": model.teacher,
            "modelled": modelled,
            "within": model.within(modelled),
        }
    return result
