"""Architecture search guided by a trained teacher, then derivation of the student cell."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from adarec.config import Config
from adarec.errors import UserError
from adarec.io import atomic_write_json, atomic_write_text
from adarec.models.teacher_protocol import check_teacher
from adarec.nas.architect import Architect
from adarec.nas.budget import CostModel, derive_within_budget
from adarec.nas.costs import SearchCosts
from adarec.nas.costs import saved_runtime as saved_runtime  # importable from here too
from adarec.nas.costs import search_cost_model as search_cost_model
from adarec.nas.genotype import (
    Genotype,
    draw_genotype,
    genotype_to_dict,
    genotype_to_text,
    save_genotype,
)
from adarec.nas.supernet import Supernet
from adarec.pipeline.common import StageData, check_teacher_window
from adarec.pipeline.stage import StageRun
from adarec.plots import plot_alpha_history
from adarec.runs import load_run_model, relative_to_run
from adarec.runtime import distributed as dist
from adarec.train.distill_stage import DistillStage
from adarec.train.sampled import NegativeSampler

log = logging.getLogger("adarec")

SUPERNET_FILE = "supernet.pt"
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


def _split_held_out(windows: Dataset, seed: int) -> tuple[Dataset, Dataset]:
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
    if teacher_dir is not None:
        check_teacher_window(teacher_dir, cfg.data.max_len)
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
    costs = _measured_costs(cfg, run, teacher)

    run.start_clock()  # measuring the ops and the budget above is not training time
    supernet = build_supernet(cfg, run.data.data.num_items).to(run.device)
    stage, train_set = search_stage(
        cfg, supernet, teacher, costs, run.data.train, run.device, run.sampler()
    )
    # The architecture is derived from the final alpha (no early stopping in the search);
    # validation is still computed every epoch to watch the derived cell.
    run.train(stage, cfg.search, "search", train_set=train_set, select_on_valid=False)
    genotype = _derive(supernet, costs.budget, run)
    extra = {"architecture": genotype_to_dict(genotype), "cost": costs.architecture_cost(genotype)}
    return run.finish(supernet, "supernet", "architecture search", extra, SUPERNET_FILE)


def search_stage(
    cfg: Config,
    supernet: Supernet,
    teacher: torch.nn.Module,
    costs: SearchCosts,
    windows: Dataset,
    device: torch.device,
    sampler: NegativeSampler | None = None,
) -> tuple[DistillStage, Dataset]:
    """The search's training stage: the architect (alpha, under ``costs``' budget or cost
    table) and the distillation of ``teacher`` into ``supernet`` (``cfg.distill``). Returns
    it with the windows the weights train on: all of ``windows``, or with bi-level
    optimisation the share not held out for alpha."""
    train_set, held_out = windows, None
    if cfg.search.optimization == "bilevel":
        train_set, held_out = _split_held_out(windows, cfg.seed)
    architect = Architect(supernet, cfg.search, cfg.seed, costs.budget, costs.table)
    stage = DistillStage(
        supernet,
        teacher,
        cfg.distill,
        cfg.search,
        device,
        cfg.seed,
        architect=architect,
        held_out=held_out,
        amp=cfg.amp,
        sampler=sampler,
    )
    return stage, train_set


def _measured_costs(cfg: Config, run: StageRun, teacher: torch.nn.Module) -> SearchCosts:
    """The search's costs (op table and, for a budgeted search, its cost model), checked
    against ``student.budget`` and written as cost_table.json."""
    # Measured latencies differ per process: every rank uses rank 0's.
    costs = dist.broadcast_object(
        SearchCosts.measure(cfg, run.data.data.num_items, teacher, run.device)
    )
    log.info("%s", costs.describe(cfg))
    # Found now, not after the search: the student stage derives under it.
    costs.require_student_budget(cfg.student.budget, cfg.search.nodes)
    if dist.is_main():
        costs.write(run.run_dir)
    return costs


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
    """The derived cell's cost under a cost_table.json's content (``cost_file``):
    ``SearchCosts.architecture_cost``."""
    return SearchCosts.from_dict(cost_file).architecture_cost(genotype)
