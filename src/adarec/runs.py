"""Model files in run directories: save a trained model with what is needed to rebuild it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarec.config import Config, ModelConfig, load_config
from adarec.errors import UserError
from adarec.io import read_json
from adarec.train import distributed as dist
from adarec.train.checkpoint import load_checkpoint, save_checkpoint

MODEL_FILE = "model.pt"


def save_model(
    run_dir: Path, model: nn.Module, spec: dict[str, Any], filename: str = MODEL_FILE
) -> None:
    """``spec`` says how to rebuild the model: kind, num_items, max_len, and its architecture."""
    if dist.is_main():
        save_checkpoint(Path(run_dir) / filename, {"spec": spec, "state_dict": model.state_dict()})


def teacher_spec(model_cfg: ModelConfig, num_items: int, max_len: int, **extra: Any) -> dict:
    from dataclasses import asdict

    return {
        "kind": "teacher",
        "model": asdict(model_cfg),
        "num_items": num_items,
        "max_len": max_len,
        **extra,
    }


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """An untrained model of the architecture that ``spec`` describes."""
    if spec["kind"] == "teacher":
        from adarec.models.factory import build_model

        model = build_model(ModelConfig(**spec["model"]), spec["num_items"], spec["max_len"])
        if "causal" in spec:
            model.causal = spec["causal"]
        return model
    if spec["kind"] == "student":
        from adarec.nas.genotype import genotype_from_dict
        from adarec.nas.student import Student

        return Student(
            spec["num_items"],
            spec["max_len"],
            genotype_from_dict(spec["genotype"]),
            dropout=spec.get("dropout", 0.1),
        )
    if spec["kind"] == "supernet":
        from adarec.nas.supernet import Supernet

        return Supernet(
            spec["num_items"],
            spec["max_len"],
            spec["width"],
            spec["cells"],
            spec["nodes"],
            op_set=spec["op_set"],
            dropout=spec["dropout"],
            mode=spec["mode"],
        )
    raise UserError(f"unknown model kind {spec['kind']!r} in model file")


def load_run_model(
    run_dir: Path, device: torch.device | str = "cpu", filename: str = MODEL_FILE
) -> tuple[nn.Module, dict]:
    """The trained model of a run directory (teacher, student or supernet), in eval mode."""
    path = Path(run_dir) / filename
    if not path.exists():
        raise UserError(f"{run_dir} has no trained model ({MODEL_FILE}); is the run finished?")
    state = load_checkpoint(path, map_location=device)
    model = build_from_spec(state["spec"])
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), state["spec"]


def load_run_config(
    run_dir: Path, config_file: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """A run directory's resolved config, optionally layered with a YAML file and ``--set``s."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not an adarec run directory (no config.yaml)")
    return load_config(config_file, overrides, base=yaml.safe_load(path.read_text()))


def read_metrics(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise UserError(f"{run_dir} has no metrics.json; is the run finished?")
    return read_json(path)
