"""Baseline: a hand-designed small model of the teacher's family trained with standard KD."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from adarec.config import Config
from adarec.pipeline.stage import StageRun
from adarec.registry import build_model
from adarec.runs import load_run_model
from adarec.train.distill_stage import DistillStage


def train_small_kd(cfg: Config, run_dir: Path, teacher_dir: Path, quiet: bool) -> dict[str, Any]:
    """Hinton-style KD: (1 - gamma) CE + gamma KL(teacher || student) on the logits."""
    run = StageRun(cfg, run_dir, True, quiet, data_of=teacher_dir)
    teacher, _ = load_run_model(teacher_dir, run.device)
    student = build_model(cfg.model, run.data.data.num_items, cfg.data.max_len)
    if hasattr(student, "causal"):  # a BERT4Rec student is trained autoregressively
        student.causal = True
    kd = copy.deepcopy(cfg.search)
    kd.use_emb, kd.use_hid, kd.use_cost, kd.gamma_decay = False, False, False, 1.0
    stage = DistillStage(
        student, teacher, kd, cfg.train, run.device, cfg.seed, amp=cfg.amp, sampler=run.sampler()
    )
    run.train(stage, cfg.train, "small_kd")
    return run.finish(student, f"small_{cfg.model.name}_kd", "small student with KD")
