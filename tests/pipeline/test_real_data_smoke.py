"""One short smoke run on the real ml-100k: teacher, search and student, a few steps each."""

from __future__ import annotations

from pathlib import Path

from adarec.config import load_config
from adarec.pipeline.search import run_search
from adarec.pipeline.student import run_student
from adarec.pipeline.teacher import train_teacher


def test_ml100k_smoke(tmp_path: Path):
    cfg = load_config(
        None,
        [
            "data.dataset=ml-100k",
            "model.name=nextitnet",
            "model.hidden_size=32",
            "train.epochs=1",
            "train.max_steps_per_epoch=8",
            "search.epochs=1",
            "search.max_steps_per_epoch=4",
            "search.width=16",
            "student.epochs=1",
            "student.max_steps_per_epoch=4",
        ],
    )
    teacher = train_teacher(cfg, tmp_path / "teacher", quiet=True)
    assert teacher["valid"]["num_users"] == 943  # 5-core ml-100k keeps every user
    assert teacher["test"]["full"]["HR@20"] > 0.0
    run_search(cfg, tmp_path / "search", tmp_path / "teacher", quiet=True)
    student = run_student(cfg, tmp_path / "student", tmp_path / "search", quiet=True)
    assert student["architecture"]["op_set"] == "causal"
    assert student["test"]["num_users"] == 943
    assert (tmp_path / "search" / "genotype.png").exists()
