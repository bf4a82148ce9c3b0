"""Baseline: a hand-designed small model of the teacher's family trained with standard KD."""

from __future__ import annotations

import dataclasses
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
    # Hinton's KD: the logit term alone, at a constant gamma, on this baseline's own copy
    # (the other settings are the distill section's, as the search's and the student's).
    kd = dataclasses.replace(cfg.distill, use_emb=False, use_hid=False, gamma_decay=1.0)
    stage = DistillStage(
        student, teacher, kd, cfg.train, run.device, cfg.seed, amp=cfg.amp, sampler=run.sampler()
    )
    run.train(stage, cfg.train, "small_kd")
    return run.finish(student, f"small_{cfg.model.name}_kd", "small student with KD")
