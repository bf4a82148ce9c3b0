"""What every stage command shares: run directories, device, data and the metrics file."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarec.config import Config, save_config
from adarec.data.preprocess import PreparedData, prepare
from adarec.data.splits import EvalSplit, TrainWindows, eval_split, train_windows
from adarec.data.stats import describe
from adarec.errors import UserError
from adarec.evaluate.evaluator import evaluate
from adarec.io import atomic_write_json
from adarec.logs import setup_logging
from adarec.models.base import count_parameters
from adarec.seed import seed_everything
from adarec.train import distributed as dist

log = logging.getLogger("adarec")


@dataclass
class StageData:
    """The prepared dataset with its training windows and both evaluation splits."""

    data: PreparedData
    train: TrainWindows
    valid: EvalSplit
    test: EvalSplit


def start_run(cfg: Config, run_dir: Path, resume: bool, quiet: bool) -> torch.device:
    """Check the run directory, set up device, process group, seed and logging."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").exists() and not resume:
        raise UserError(
            f"{run_dir} already holds a finished run; pass --resume to reuse it "
            "or choose another --out"
        )
    if (run_dir / "checkpoints" / "last.pt").exists() and not resume:
        raise UserError(
            f"{run_dir} holds an interrupted run; pass --resume to continue it "
            "or choose another --out"
        )
    device = dist.resolve_device(cfg.device)
    dist.init_distributed(device)
    seed_everything(cfg.seed)
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    setup_logging(run_dir, quiet)
    log.info("run directory %s, device %s, world size %d", run_dir, device, dist.world_size())
    return device


def load_stage_data(cfg: Config, quiet: bool = True) -> StageData:
    """Prepare (or load from cache) the dataset; rank 0 prepares first, the others reuse it."""
    if not dist.is_main():
        dist.barrier()
    data = prepare(cfg.data, cfg.seed, progress=not quiet and dist.is_main())
    if dist.is_main():
        dist.barrier()
    for entry in data.filter_log:
        log.info(
            "data filter '%s': %d of %d rows removed",
            entry["step"],
            entry["rows_before"] - entry["rows_after"],
            entry["rows_before"],
        )
    windows = train_windows(data, cfg.data.max_len, cfg.data.long_sequences, cfg.data.min_window)
    if len(windows) == 0:
        raise UserError("no training windows left: sequences are too short for leave-one-out")
    log.info(
        "data %s: %d users, %d items, %d interactions, %d training windows",
        data.name,
        data.num_users,
        data.num_items,
        data.num_interactions,
        len(windows),
    )
    return StageData(
        data=data,
        train=TrainWindows(windows),
        valid=eval_split(data, "valid", cfg.data.max_len),
        test=eval_split(data, "test", cfg.data.max_len),
    )


def write_data_files(run_dir: Path, data: PreparedData) -> None:
    """The id mapping (so the run can be served alone) and the dataset statistics."""
    if dist.is_main():
        atomic_write_json(Path(run_dir) / "items.json", data.item_ids)
        atomic_write_json(Path(run_dir) / "data.json", describe(data))


def final_metrics(
    model: nn.Module,
    cfg: Config,
    stage_data: StageData,
    device: torch.device,
    model_name: str,
    train_seconds: float,
    epochs: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metrics.json contract: valid and test, full ranking and sampled, params, time."""
    ev = cfg.eval
    metrics: dict[str, Any] = {
        "dataset": stage_data.data.name,
        "model": model_name,
        "valid": evaluate(model, stage_data.valid, ev.ks, ev.batch_size, device, ev.exclude_seen),
        "test": evaluate(model, stage_data.test, ev.ks, ev.batch_size, device, ev.exclude_seen),
        "params": count_parameters(model),
        "train_seconds": round(train_seconds, 2),
        "epochs": epochs,
        "exclude_seen": ev.exclude_seen,
    }
    metrics.update(extra or {})
    return metrics


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    if dist.is_main():
        atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    # metrics.json marks a finished stage: no rank may go on to read it before it exists.
    dist.barrier()
    test = metrics["test"]
    log.info(
        "%s test: NDCG@10 %.4f HR@10 %.4f (sampled NDCG@10 %.4f HR@10 %.4f)",
        metrics["model"],
        test["full"]["NDCG@10"],
        test["full"]["HR@10"],
        test["sampled"]["NDCG@10"],
        test["sampled"]["HR@10"],
    )


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start
