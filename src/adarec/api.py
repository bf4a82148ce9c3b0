"""The Python API: AdaRec's stages as functions, for use from a script or a notebook.

Each function is a thin wrapper over the stage that the command line runs (``adarec
teacher``, ``search``, ``finetune``, ``evaluate``, ``export``, ``recommend``): it takes a
configuration and run directories, writes the same run directory as the command, and
returns its metrics (or a path, or an object to use). Nothing is printed unless
``quiet=False``; errors a user can cause raise ``adarec.errors.UserError``.

    from adarec import api

    cfg = api.config("configs/quick.yaml", ["data.dataset=ml-100k", "model.name=sasrec"])
    api.train_teacher(cfg, "runs/py/teacher")
    api.search(cfg, "runs/py/search", teacher="runs/py/teacher")
    student = api.retrain(cfg, "runs/py/student", search="runs/py/search")
    artefact = api.export("runs/py/student", "onnx")

The teacher of ``search`` may also be any torch module that follows
``adarec.models.teacher_protocol.TeacherProtocol`` (bring your own teacher).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from adarec.config import Config, load_config
from adarec.models.teacher_protocol import TeacherProtocol
from adarec.pipeline import teacher as teacher_stage
from adarec.pipeline.common import StageData, load_stage_data
from adarec.pipeline.evaluate import evaluate_run
from adarec.pipeline.search import run_search
from adarec.pipeline.student import run_student
from adarec.runs import load_run_config, load_run_model
from adarec.serve.export import export_run
from adarec.serve.predictor import Predictor

__all__ = [
    "StageData",
    "TeacherProtocol",
    "config",
    "evaluate",
    "export",
    "load_data",
    "load_teacher",
    "predictor",
    "retrain",
    "search",
    "train_teacher",
]


def config(
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    run: str | Path | None = None,
) -> Config:
    """A validated configuration: the defaults (or the saved config of the finished run
    ``run``), then the YAML ``file``, then ``overrides`` such as ``"train.epochs=5"`` (the
    syntax of the command line's ``--set``)."""
    if run is not None:
        return load_run_config(Path(run), file, list(overrides))
    return load_config(file, list(overrides))


def load_data(cfg: Config) -> StageData:
    """The prepared dataset of ``cfg.data`` (cached) with its splits, as the stages see it.

    ``.data.num_items`` and ``.data.item_ids`` are the catalogue a teacher of your own must
    score (internal ids 1..N; 0 is padding); ``.train`` yields training windows, LongTensors
    [max_len + 1] whose first max_len items predict the last max_len.
    """
    return load_stage_data(cfg)


def train_teacher(
    cfg: Config, out: str | Path, resume: bool = False, quiet: bool = True
) -> dict[str, Any]:
    """Train the teacher that ``cfg.model`` describes into the run directory ``out``."""
    return teacher_stage.train_teacher(cfg, Path(out), quiet=quiet, resume=resume)


def load_teacher(run_dir: str | Path, device: str = "cpu") -> nn.Module:
    """The trained model of a finished run directory (a teacher), in eval mode."""
    model, _ = load_run_model(Path(run_dir), device)
    return model


def search(
    cfg: Config,
    out: str | Path,
    teacher: str | Path | TeacherProtocol,
    resume: bool = False,
    quiet: bool = True,
) -> dict[str, Any]:
    """Search a student cell into ``out``, distilled from ``teacher``: a finished teacher
    run directory, or a torch module that follows ``TeacherProtocol`` (it is checked, moved to
    ``cfg.device``, put in eval mode and frozen). The metrics hold the ``architecture``."""
    if isinstance(teacher, nn.Module):
        return run_search(cfg, Path(out), None, quiet=quiet, resume=resume, teacher=teacher)
    return run_search(cfg, Path(out), Path(teacher), quiet=quiet, resume=resume)


def retrain(
    cfg: Config,
    out: str | Path,
    search: str | Path,
    teacher: TeacherProtocol | None = None,
    resume: bool = False,
    quiet: bool = True,
) -> dict[str, Any]:
    """Retrain the student that the search in ``search`` derived (the paper's finetune).

    With ``student.loss=kd`` the student is distilled again from the search's teacher; a
    search given a teacher module needs it again as ``teacher``.
    """
    return run_student(cfg, Path(out), Path(search), quiet=quiet, resume=resume, teacher=teacher)


def evaluate(run_dir: str | Path, exclude_seen: bool = False) -> dict[str, Any]:
    """Fresh validation and test metrics of a finished run (also written to evaluation.json)."""
    return evaluate_run(Path(run_dir), exclude_seen=exclude_seen)


def export(
    run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, device: str = "cpu"
) -> Path:
    """Write the run's self-contained serving artefact (``onnx`` or ``torchscript``);
    returns its directory (default ``RUN_DIR/export/FORMAT``)."""
    return export_run(Path(run_dir), fmt, Path(out) if out is not None else None, device)


def predictor(path: str | Path, backend: str | None = None, device: str = "cpu") -> Predictor:
    """Top-k recommendations for raw item histories from a run or an exported artefact:
    ``predictor(path).recommend(["i1", "i2"], k=10)``."""
    return Predictor.from_run(Path(path), backend, device)
