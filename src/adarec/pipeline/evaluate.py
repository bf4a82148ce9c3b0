"""Re-evaluate a finished run directory (teacher or student) on its validation and test splits."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from adarec.io import read_json
from adarec.pipeline.common import (
    StageData,
    final_metrics,
    load_stage_data,
    write_data_record,
    write_serving_files,
    write_test_ranks,
)
from adarec.runs import DATA_FILE, check_run_data, load_run_config, load_run_model, read_metrics
from adarec.runtime import distributed as dist

log = logging.getLogger("adarec")


def evaluate_run(run_dir: Path, exclude_seen: bool = False) -> dict[str, Any]:
    """Fresh metrics for the run's saved model (written to ``evaluation.json``; the per-user
    test ranks to ``test_ranks.json`` when they are those of the metrics.json's setting).

    A run from an older version also gets the files serving reads that it lacks
    (popularity.json, test_histories.json), from its data once that is checked."""
    from adarec.io import atomic_write_json

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    cfg.eval.exclude_seen = exclude_seen
    saved = read_metrics(run_dir)
    device = dist.resolve_device(cfg.device)
    dist.init_distributed(device)  # under torchrun every rank scores its shard of users
    model, _ = load_run_model(run_dir, device)
    stage_data: StageData = load_stage_data(cfg)
    check_run_data(run_dir, stage_data.data)
    metrics = final_metrics(
        model, cfg, stage_data, device, saved["model"], saved["train_seconds"], saved["epochs"]
    )
    ranks = metrics["test"].pop("ranks")
    if dist.is_main():
        for name in write_serving_files(run_dir, stage_data.data, only_missing=True):
            log.info("wrote %s, which %s did not have yet", name, run_dir)
        if _lacks_fingerprint(run_dir):
            # Accepted by check_run_data only as regenerated from the run's configuration:
            # the fingerprint is rebuilt, and later checks no longer need the regeneration.
            write_data_record(run_dir, stage_data.data)
            log.info("wrote %s, which %s did not have yet", DATA_FILE, run_dir)
        if exclude_seen == saved.get("exclude_seen", False):
            write_test_ranks(run_dir, ranks)
        atomic_write_json(run_dir / "evaluation.json", metrics)
    return metrics


def _lacks_fingerprint(run_dir: Path) -> bool:
    path = Path(run_dir) / DATA_FILE
    return not path.exists() or "fingerprint" not in read_json(path, dict)


def excluded_seen_test(run_dir: Path) -> dict[str, Any]:
    """The run's test metrics with the user's history items left out of the ranking:
    ``evaluation.json`` when it holds them already, else a fresh ``evaluate_run``."""
    path = Path(run_dir) / "evaluation.json"
    if path.exists():
        saved = read_json(path)
        if saved.get("test", {}).get("exclude_seen"):
            return saved["test"]
    return evaluate_run(run_dir, exclude_seen=True)["test"]
