"""Baseline: a hand-designed small model of the teacher's family trained with standard KD."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from adarec.config import Config
from adarec.pipeline.common import (
    Timer,
    final_metrics,
    load_stage_data,
    start_run,
    write_data_files,
    write_metrics,
)
from adarec.pipeline.search import check_same_data
from adarec.plots import plot_training_curves
from adarec.registry import build_model
from adarec.runs import load_run_model, save_model
from adarec.train.distill_stage import DistillStage
from adarec.train.loop import run_training


def train_small_kd(cfg: Config, run_dir: Path, teacher_dir: Path, quiet: bool) -> dict[str, Any]:
    """Hinton-style KD: (1 - gamma) CE + gamma KL(teacher || student) on the logits."""
    run_dir = Path(run_dir)
    device = start_run(cfg, run_dir, True, quiet)
    stage_data = load_stage_data(cfg, quiet)
    check_same_data(teacher_dir, stage_data)
    write_data_files(run_dir, stage_data.data)
    teacher, _ = load_run_model(teacher_dir, device)
    num_items, max_len = stage_data.data.num_items, cfg.data.max_len
    student = build_model(cfg.model, num_items, max_len)
    if hasattr(student, "causal"):  # a BERT4Rec student is trained autoregressively
        student.causal = True
    kd = copy.deepcopy(cfg.search)
    kd.use_emb, kd.use_hid, kd.use_cost, kd.gamma_decay = False, False, False, 1.0
    timer = Timer()
    stage = DistillStage(student, teacher, kd, cfg.train, device, cfg.seed, amp=cfg.amp)
    result = run_training(
        stage,
        stage_data.train,
        stage_data.valid,
        cfg.train,
        cfg.eval,
        run_dir,
        cfg.seed,
        device,
        quiet,
        resume=True,
        desc="small_kd",
    )
    plot_training_curves(result.history, run_dir / "curves.png", "small student with KD")
    save_model(run_dir, student)
    metrics = final_metrics(
        student,
        cfg,
        stage_data,
        device,
        f"small_{cfg.model.name}_kd",
        timer.seconds(),
        result.epochs,
    )
    write_metrics(run_dir, metrics)
    return metrics
