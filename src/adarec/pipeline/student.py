"""Retrain the derived student (the paper's "finetune") and evaluate it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from adarec.config import Config
from adarec.errors import UserError
from adarec.io import read_json
from adarec.nas.genotype import Genotype, genotype_to_dict, load_genotype
from adarec.nas.student import Student, inherit_weights
from adarec.pipeline.common import (
    Timer,
    final_metrics,
    load_stage_data,
    start_run,
    write_data_files,
    write_metrics,
)
from adarec.pipeline.search import (
    SUPERNET_FILE,
    architecture_cost,
    check_same_data,
    distilled_teacher,
)
from adarec.plots import plot_training_curves
from adarec.runs import load_run_model, resolve_from_run, save_model
from adarec.train.distill_stage import DistillStage
from adarec.train.loop import run_training
from adarec.train.supervised import SupervisedStage

log = logging.getLogger("adarec")


def student_spec(genotype: Genotype, num_items: int, max_len: int, dropout: float) -> dict:
    return {
        "kind": "student",
        "genotype": genotype_to_dict(genotype),
        "num_items": num_items,
        "max_len": max_len,
        "dropout": dropout,
    }


def _search_file(search_dir: Path, name: str, key: str) -> dict[str, Any]:
    """A JSON file the search wrote, holding ``key``; UserError naming the file if damaged."""
    path = Path(search_dir) / name
    hint = "run the search again"
    content = read_json(path, dict, hint)
    if key not in content:
        raise UserError(f"{path} is damaged: no {key!r}; {hint}")
    return content


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
    """
    run_dir, search_dir = Path(run_dir), Path(search_dir)
    if not (search_dir / "genotype.json").exists():
        raise UserError(f"{search_dir} holds no finished search (genotype.json missing)")
    # The search's files are read before anything is written or trained.
    genotype = genotype or load_genotype(search_dir / "genotype.json")
    cost_file = _search_file(search_dir, "cost_table.json", "cost")
    teacher_dir = None
    if cfg.student.loss == "kd" and teacher is None:
        recorded = _search_file(search_dir, "teacher.json", "run_dir")["run_dir"]
        if recorded is None:
            raise UserError(
                f"the search in {search_dir} distilled a teacher module given in Python; "
                "retraining with student.loss=kd needs that module again (teacher=...)"
            )
        teacher_dir = resolve_from_run(recorded, search_dir)
    device = start_run(cfg, run_dir, resume, quiet)
    stage_data = load_stage_data(cfg, quiet)
    check_same_data(search_dir, stage_data)
    write_data_files(run_dir, stage_data.data)
    num_items, max_len = stage_data.data.num_items, cfg.data.max_len
    student = Student(num_items, max_len, genotype, dropout=cfg.search.dropout)
    if cfg.student.init == "inherit":
        supernet, _ = load_run_model(search_dir, device, filename=SUPERNET_FILE)
        copied = inherit_weights(student, supernet)
        log.info("student inherits %d tensors from the searched supernet", copied)
    timer = Timer()
    if cfg.student.loss == "kd":
        teacher = distilled_teacher(teacher_dir, teacher, stage_data, max_len, device)
        stage = DistillStage(
            student, teacher, cfg.search, cfg.student, device, cfg.seed, amp=cfg.amp
        )
    else:
        stage = SupervisedStage(student, cfg.student, device, cfg.amp)
    result = run_training(
        stage,
        stage_data.train,
        stage_data.valid,
        cfg.student,
        cfg.eval,
        run_dir,
        cfg.seed,
        device,
        quiet,
        resume,
        desc=name,
    )
    plot_training_curves(result.history, run_dir / "curves.png", f"{name} retraining")
    save_model(run_dir, student, student_spec(genotype, num_items, max_len, cfg.search.dropout))
    metrics = final_metrics(
        student,
        cfg,
        stage_data,
        device,
        name,
        timer.seconds(),
        result.epochs,
        extra={
            "architecture": genotype_to_dict(genotype),
            "cost": architecture_cost(genotype, cost_file),
        },
    )
    write_metrics(run_dir, metrics)
    return metrics
