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

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarec.config import Config, load_config
from adarec.errors import UserError
from adarec.models.teacher_protocol import TeacherProtocol
from adarec.pipeline import teacher as teacher_stage
from adarec.pipeline.common import StageData, load_stage_data
from adarec.pipeline.evaluate import evaluate_run
from adarec.pipeline.search import run_search
from adarec.pipeline.student import run_student
from adarec.runs import load_run_config, load_run_model
from adarec.runtime.distributed import resolve_device
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


# The arguments of every function are checked first: a wrong type is a UserError naming
# the argument (as the command line names its option), never a TypeError from deep inside.


def _kind(value: Any) -> str:
    return type(value).__name__


def _path(value: Any, name: str) -> Path:
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        # "" is Path("."), the working directory: never what a caller meant to name.
        if isinstance(text, str) and text.strip() and "\0" not in text:
            return Path(text)
        raise UserError(f"{name} must name a path; got {value!r}")
    raise UserError(f"{name} must be a path (str or pathlib.Path); got {_kind(value)}")


def _optional_path(value: Any, name: str) -> Path | None:
    return None if value is None else _path(value, name)


def _config(value: Any) -> Config:
    if not isinstance(value, Config):
        raise UserError(f"cfg must be a Config (from adarec.api.config); got {_kind(value)}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{name} must be True or False; got {value!r}")
    return value


def _text(value: Any, name: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise UserError(f"{name} must be a string; got {_kind(value)}")
    return value


def _device(value: Any) -> str | torch.device:
    """``value`` once it names a usable device (cpu, cuda, cuda:N, auto)."""
    if not isinstance(value, torch.device):
        _text(value, "device")
    resolve_device(value)
    return value


def _overrides(value: Any) -> list[str]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise UserError(
            f'overrides must be a list of "key=value" strings; got {_kind(value)} {value!r:.60}'
        )
    for item in value:
        if not isinstance(item, str):
            raise UserError(f'overrides must hold "key=value" strings; got {_kind(item)}')
    return list(value)


def _teacher_module(value: Any, name: str) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise UserError(
            f"{name} must be a torch module that follows TeacherProtocol; got {_kind(value)}"
        )
    return value


def config(
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
    run: str | Path | None = None,
) -> Config:
    """A validated configuration: the defaults (or the saved config of the finished run
    ``run``), then the YAML ``file``, then ``overrides`` such as ``"train.epochs=5"`` (the
    syntax of the command line's ``--set``)."""
    file = _optional_path(file, "file")
    overrides = _overrides(overrides)
    if run is not None:
        return load_run_config(_path(run, "run"), file, overrides)
    return load_config(file, overrides)


def load_data(cfg: Config) -> StageData:
    """The prepared dataset of ``cfg.data`` (cached) with its splits, as the stages see it.

    ``.data.num_items`` and ``.data.item_ids`` are the catalogue a teacher of your own must
    score (internal ids 1..N; 0 is padding); ``.train`` yields training windows, LongTensors
    [max_len + 1] whose first max_len items predict the last max_len.
    """
    return load_stage_data(_config(cfg))


def train_teacher(
    cfg: Config, out: str | Path, resume: bool = False, quiet: bool = True
) -> dict[str, Any]:
    """Train the teacher that ``cfg.model`` describes into the run directory ``out``."""
    cfg, out = _config(cfg), _path(out, "out")
    resume, quiet = _flag(resume, "resume"), _flag(quiet, "quiet")
    return teacher_stage.train_teacher(cfg, out, quiet=quiet, resume=resume)


def load_teacher(run_dir: str | Path, device: str = "cpu") -> nn.Module:
    """The trained model of a finished run directory (a teacher), in eval mode."""
    model, _ = load_run_model(_path(run_dir, "run_dir"), resolve_device(_device(device)))
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
    cfg, out = _config(cfg), _path(out, "out")
    resume, quiet = _flag(resume, "resume"), _flag(quiet, "quiet")
    if isinstance(teacher, nn.Module):
        return run_search(cfg, out, None, quiet=quiet, resume=resume, teacher=teacher)
    if not isinstance(teacher, str | os.PathLike):
        raise UserError(
            "teacher must be a teacher run directory or a torch module that follows "
            f"TeacherProtocol; got {_kind(teacher)}"
        )
    return run_search(cfg, out, _path(teacher, "teacher"), quiet=quiet, resume=resume)


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
    cfg, out, search_dir = _config(cfg), _path(out, "out"), _path(search, "search")
    resume, quiet = _flag(resume, "resume"), _flag(quiet, "quiet")
    if teacher is not None:
        teacher = _teacher_module(teacher, "teacher")
    return run_student(cfg, out, search_dir, quiet=quiet, resume=resume, teacher=teacher)


def evaluate(run_dir: str | Path, exclude_seen: bool = False) -> dict[str, Any]:
    """Fresh validation and test metrics of a finished run (also written to evaluation.json)."""
    exclude_seen = _flag(exclude_seen, "exclude_seen")
    return evaluate_run(_path(run_dir, "run_dir"), exclude_seen=exclude_seen)


def export(
    run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, device: str = "cpu"
) -> Path:
    """Write the run's self-contained serving artefact (``onnx`` or ``torchscript``);
    returns its directory (default ``RUN_DIR/export/FORMAT``)."""
    run_dir, out = _path(run_dir, "run_dir"), _optional_path(out, "out")
    return export_run(run_dir, _text(fmt, "fmt"), out, _device(device))


def predictor(path: str | Path, backend: str | None = None, device: str = "cpu") -> Predictor:
    """Top-k recommendations for raw item histories from a run or an exported artefact:
    ``predictor(path).recommend(["i1", "i2"], k=10)``."""
    backend = _text(backend, "backend", optional=True)
    return Predictor.from_run(_path(path, "path"), backend, _device(device))
