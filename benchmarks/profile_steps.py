"""Where does a search step and a retraining step spend its time? (issue: ml-1m schedules)

Usage: python benchmarks/profile_steps.py --config configs/ml-1m.yaml --teacher RUN_DIR
       [--search-dir SEARCH_RUN] [--steps 5] [--threads 1] [--set key=value ...]

Builds the two stages exactly as ``adarec search`` and ``adarec finetune`` do (supernet +
architect + distillation; the derived student, from --search-dir's genotype or the
cheapest cell, with the configured retraining loss), runs one warm-up step and then
``--steps`` timed steps of each on real training windows, and writes
benchmarks/results/profile_DATASET.json: the median seconds per step, the share of the
frozen teacher's forward pass (timed alone on the same batch), and the ten operators with
the most self CPU time in one step under torch.profiler.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from adarec.config import Config, load_config
from adarec.data.splits import item_counts
from adarec.evaluate.latency import machine_description
from adarec.io import atomic_write_json
from adarec.nas.costs import SearchCosts, empty_genotype
from adarec.nas.genotype import load_genotype
from adarec.nas.student import Student
from adarec.pipeline.common import StageData, load_stage_data
from adarec.pipeline.search import build_supernet
from adarec.pipeline.search import search_stage as build_search_stage
from adarec.pipeline.student import retraining_stage
from adarec.runs import load_run_model
from adarec.train.distill_stage import DistillStage
from adarec.train.sampled import NegativeSampler, make_sampler
from adarec.train.supervised import next_item_batch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def training_batches(windows: torch.utils.data.Dataset, batch_size: int, count: int) -> list:
    """The first ``count`` batches of shuffled training windows (fixed shuffle seed)."""
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        windows, batch_size=batch_size, shuffle=True, generator=generator
    )
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def sampler_of(cfg: Config, stage_data: StageData) -> NegativeSampler | None:
    """The sampled softmax's negatives, as a stage on this data has them (``StageRun``)."""
    return make_sampler(cfg.sampled_softmax, item_counts(stage_data.data))


def search_stage(
    cfg: Config, stage_data: StageData, teacher: torch.nn.Module, device: torch.device
) -> tuple[DistillStage, int]:
    """The search stage as ``adarec search`` builds it (``pipeline.search.search_stage``:
    supernet, architect with the budget's cost model or the paper's cost table,
    distillation, bi-level's held-out windows), started at the first epoch in which alpha
    moves; returns the stage and that epoch."""
    torch.manual_seed(cfg.seed)
    num_items = stage_data.data.num_items
    supernet = build_supernet(cfg, num_items)
    costs = SearchCosts.measure(cfg, num_items, teacher, device)
    stage, _ = build_search_stage(
        cfg, supernet, teacher, costs, stage_data.train, device, sampler_of(cfg, stage_data)
    )
    epoch = stage.architect.warmup_epochs
    stage.on_epoch_start(epoch)
    return stage, epoch


def _time_steps(stage: Any, batches: list, epoch: int) -> dict[str, Any]:
    """Median seconds per step (the first batch warms up; timed without the profiler, whose
    bookkeeping slows the many small ops of a supernet), then the top operators of one
    profiled step."""
    stage.train_step(batches[0], epoch, 0)
    seconds = []
    for step, batch in enumerate(batches[1:], start=1):
        start = time.perf_counter()
        stage.train_step(batch, epoch, step)
        seconds.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        stage.train_step(batches[1], epoch, len(batches))
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return {
        "seconds_per_step": round(statistics.median(seconds), 4),
        "steps": len(seconds),
        "top_ops": [
            {
                "op": e.key,
                "self_cpu_share": round(e.self_cpu_time_total / total, 4),
                "calls": e.count,
            }
            for e in events[:10]
        ],
    }


def _teacher_seconds(teacher: torch.nn.Module, batches: list) -> float:
    """The frozen teacher's forward pass and logits alone, as the distillation runs them."""
    times = []
    with torch.no_grad():
        for batch in batches:
            inputs, _ = next_item_batch(batch, 0, 0)
            start = time.perf_counter()
            teacher.logits(teacher(inputs).output)
            times.append(time.perf_counter() - start)
    return round(statistics.median(times[1:] or times), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--teacher", required=True, help="finished teacher run directory")
    parser.add_argument("--search-dir", help="a finished search: retrain its derived cell")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / args.config, args.overrides)
    torch.manual_seed(cfg.seed)
    device = torch.device("cpu")
    stage_data = load_stage_data(cfg)
    num_items = stage_data.data.num_items
    teacher, _ = load_run_model(Path(args.teacher), device)
    teacher.eval()

    # Search: supernet, architect past its warm-up (so alpha steps too), distillation.
    search, epoch = search_stage(cfg, stage_data, teacher, device)
    batches = training_batches(stage_data.train, cfg.search.batch_size, args.steps + 1)
    result = {"search": _time_steps(search, batches, epoch)}
    result["search"]["teacher_forward_seconds"] = _teacher_seconds(teacher, batches)

    # Retraining: the derived (or cheapest) cell with the configured loss.
    genotype = (
        load_genotype(Path(args.search_dir) / "genotype.json")
        if args.search_dir
        else empty_genotype(cfg)
    )
    student = Student(
        num_items,
        cfg.data.max_len,
        genotype,
        dropout=cfg.search.dropout,
        positions=cfg.student.positions,
    )
    retrain = retraining_stage(cfg, student, teacher, device, sampler_of(cfg, stage_data))
    retrain.on_epoch_start(0)
    batches = training_batches(stage_data.train, cfg.student.batch_size, args.steps + 1)
    result["retrain"] = _time_steps(retrain, batches, 0)
    result["retrain"]["loss"] = cfg.student.loss

    steps_per_epoch = {
        stage: -(-len(stage_data.train) // getattr(cfg, section).batch_size)
        for stage, section in (("search", "search"), ("retrain", "student"))
    }
    for stage, record in result.items():
        record["steps_per_epoch"] = steps_per_epoch[stage]
        record["train_seconds_per_epoch"] = round(
            record["seconds_per_step"] * steps_per_epoch[stage], 1
        )
    result.update(
        {
            "dataset": stage_data.data.name,
            "training_windows": len(stage_data.train),
            "command": " ".join(["python benchmarks/profile_steps.py", *sys.argv[1:]]),
            "machine": machine_description(),
            "threads": args.threads,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
    )
    path = RESULTS / f"profile_{stage_data.data.name}.json"
    atomic_write_json(path, result)
    for stage in ("search", "retrain"):
        r = result[stage]
        tops = ", ".join(f"{o['op']} {o['self_cpu_share']:.0%}" for o in r["top_ops"][:5])
        per_epoch = r["train_seconds_per_epoch"]
        print(f"{stage}: {r['seconds_per_step']:.3f} s/step ({per_epoch} s/epoch); {tops}")
    print(f"teacher forward alone: {result['search']['teacher_forward_seconds']:.3f} s/step")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
