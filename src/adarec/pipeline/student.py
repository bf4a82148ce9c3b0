"""Retrain the derived student (the paper's "finetune") and evaluate it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarec.config import Config
from adarec.errors import UserError
from adarec.io import read_json
from adarec.nas.budget import CostModel, derive_within_budget
from adarec.nas.costs import STUDENT_BUDGET, STUDENT_BUDGET_ADVICE, SearchCosts
from adarec.nas.genotype import Genotype, genotype_to_dict, load_genotype
from adarec.nas.student import Student, inherit_weights
from adarec.pipeline.common import check_teacher_window
from adarec.pipeline.search import SUPERNET_FILE, distilled_teacher
from adarec.pipeline.stage import StageRun
from adarec.runs import load_run_model, resolve_from_run
from adarec.train.distill_stage import DistillStage
from adarec.train.loop import Stage
from adarec.train.sampled import NegativeSampler
from adarec.train.supervised import SupervisedStage

log = logging.getLogger("adarec")


def _search_file(search_dir: Path, name: str, key: str) -> dict[str, Any]:
    """A JSON file the search wrote, holding ``key``; UserError naming the file if damaged."""
    path = Path(search_dir) / name
    hint = "run the search again"
    content = read_json(path, dict, hint)
    if key not in content:
        raise UserError(f"{path} is damaged: no {key!r}; {hint}")
    return content


def cost_model_of_search(search_dir: Path) -> CostModel:
    """The cost model a finished search ran under (``SearchCosts.budget_model``)."""
    return SearchCosts.read(search_dir).budget_model()


def rederived_cost_model(search_dir: Path, budget: str) -> CostModel:
    """The search's cost model with its target moved to ``budget``, a speed-up
    (``SearchCosts.rederived``)."""
    return SearchCosts.read(search_dir).rederived(budget)


def rederived_genotype(search_dir: Path, model: CostModel) -> Genotype:
    """The search's architecture weights derived again under ``model`` (its cost model
    with another target, ``rederived_cost_model``): the most probable op per edge,
    repaired until the cell fits, as the search derives."""
    supernet, _ = load_run_model(search_dir, "cpu", filename=SUPERNET_FILE)
    nodes = len(supernet.genotype().nodes)
    model.require_reachable(nodes, STUDENT_BUDGET, STUDENT_BUDGET_ADVICE)
    genotype, changes = derive_within_budget(
        list(supernet.alphas), supernet.op_names, supernet.genotype(), model
    )
    for change in changes:
        log.info("derivation at %s: %s", model.budget, change)
    return genotype


def kd_teacher_dir(cfg: Config, search_dir: Path, teacher: nn.Module | None) -> Path | None:
    """The teacher run that retraining with ``student.loss=kd`` distils (the search's),
    or None (cross-entropy, or a ``teacher`` module given)."""
    if cfg.student.loss != "kd" or teacher is not None:
        return None
    recorded = _search_file(search_dir, "teacher.json", "run_dir")["run_dir"]
    if recorded is None:
        raise UserError(
            f"the search in {search_dir} distilled a teacher module given in Python; "
            "retraining with student.loss=kd needs that module again (teacher=...)"
        )
    return resolve_from_run(recorded, search_dir)


def new_student(
    cfg: Config,
    genotype: Genotype,
    num_items: int,
    search_dir: Path,
    device: torch.device,
    supernet: nn.Module | None = None,
) -> Student:
    """The student of ``genotype``, with the supernet's weights of its ops when
    ``student.init`` is inherit (``supernet``: the search's, when already loaded)."""
    student = Student(
        num_items,
        cfg.data.max_len,
        genotype,
        dropout=cfg.search.dropout,
        positions=cfg.student.positions,
    )
    if cfg.student.init == "inherit":
        if supernet is None:
            supernet, _ = load_run_model(search_dir, device, filename=SUPERNET_FILE)
        copied = inherit_weights(student, supernet)
        log.info("student inherits %d tensors from the searched supernet", copied)
    return student


def retraining_stage(
    cfg: Config,
    student: Student,
    teacher: nn.Module | None,
    device: torch.device,
    sampler: NegativeSampler | None = None,
) -> Stage:
    """The training stage of a student: distillation from ``teacher`` (``student.loss``
    kd) or cross-entropy; with ``sampler``, over sampled candidates (``StageRun.sampler``)."""
    if cfg.student.loss == "kd":
        return DistillStage(
            student,
            teacher,
            cfg.distill,
            cfg.student,
            device,
            cfg.seed,
            amp=cfg.amp,
            sampler=sampler,
        )
    return SupervisedStage(student, cfg.student, device, cfg.amp, sampler=sampler)


def run_student(
    cfg: Config,
    run_dir: Path,
    search_dir: Path,
    quiet: bool = False,
    resume: bool = False,
    genotype: Genotype | None = None,
    name: str = "student",
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Build the student from ``search_dir``'s genotype (or ``genotype``) and retrain it.

    ``cfg.student.init``: inherit the supernet's weights of the chosen ops (paper) or start
    fresh; ``cfg.student.loss``: cross-entropy only (paper) or with the distillation losses,
    from the search's teacher or from ``teacher`` (a module; needed when the search had one).
    ``cfg.student.budget``: derive the cell again from the search's architecture weights
    under that speed-up instead of taking the search's own (ignored with ``genotype``).
    ``cfg.student.positions``: with "none" the student has no position embedding (the
    supernet's is not inherited).
    """
    search_dir = Path(search_dir)
    if not (search_dir / "genotype.json").exists():
        raise UserError(f"{search_dir} holds no finished search (genotype.json missing)")
    # The search's files are read before anything is written or trained.
    costs = SearchCosts.read(search_dir)
    if genotype is None and cfg.student.budget:
        model = costs.rederived(cfg.student.budget)
        genotype = rederived_genotype(search_dir, model)
        # The student's cost is reported against the budget it was derived under.
        costs = costs.with_budget(model)
    genotype = genotype or load_genotype(search_dir / "genotype.json")
    teacher_dir = kd_teacher_dir(cfg, search_dir, teacher)
    if teacher_dir is not None:
        check_teacher_window(teacher_dir, cfg.data.max_len)
    run = StageRun(cfg, run_dir, resume, quiet, data_of=search_dir)
    student = new_student(cfg, genotype, run.data.data.num_items, search_dir, run.device)
    if cfg.student.loss == "kd":
        teacher = distilled_teacher(teacher_dir, teacher, run.data, cfg.data.max_len, run.device)
    stage = retraining_stage(cfg, student, teacher, run.device, run.sampler())
    run.train(stage, cfg.student, name)
    extra = {
        "architecture": genotype_to_dict(genotype),
        "cost": costs.architecture_cost(genotype),
    }
    return run.finish(student, name, f"{name} retraining", extra)
