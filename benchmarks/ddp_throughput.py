"""Teacher training throughput (windows/s) in 1 process vs 2 processes (torchrun, DDP).

Usage: python benchmarks/ddp_throughput.py [--steps 40] [--warmup 3] [--cores 2]
    [--device cpu] [--out benchmarks/results/ddp_throughput.json]

Quick SASRec (configs/quick.yaml) on ml-100k, a fixed number of optimiser steps after a
few warm-up steps, timed between two barriers. The main pair uses the same cores in total:
1 process x N threads against N processes x 1 thread (OMP_NUM_THREADS); a third run, 1
process x 1 thread, shows what one core does alone. ``train.batch_size`` is per process, so
N processes step on N times the global batch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "ddp_throughput.json"
CONFIG = ROOT / "configs" / "quick.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed optimiser steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--cores", type=int, default=2, help="threads in all, shared out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One process of a measurement; rank 0 writes the result to ``args.worker``."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from adarec.config import load_config
    from adarec.io import atomic_write_json
    from adarec.pipeline.common import load_stage_data
    from adarec.registry import build_model
    from adarec.runtime import distributed as dist
    from adarec.runtime.seed import seed_everything
    from adarec.train.supervised import SupervisedStage

    cfg = load_config(CONFIG, ["data.dataset=ml-100k", "model.name=sasrec"])
    device = dist.resolve_device(args.device)
    dist.init_distributed(device)
    seed_everything(cfg.seed)
    data = load_stage_data(cfg)
    stage = SupervisedStage(
        build_model(cfg.model, data.data.num_items, cfg.data.max_len), cfg.train, device, cfg.amp
    )
    sampler = DistributedSampler(
        data.train, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=True, seed=cfg.seed
    )
    loader = DataLoader(data.train, batch_size=cfg.train.batch_size, sampler=sampler)

    def batches():
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from loader

    stream = batches()
    for step in range(args.warmup):
        stage.train_step(next(stream), 0, step)
    windows = 0
    dist.barrier()
    started = time.perf_counter()
    for step in range(args.steps):
        batch = next(stream)
        windows += batch.size(0)
        stage.train_step(batch, 0, step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()
    seconds = time.perf_counter() - started
    total = sum(dist.all_gather_objects(windows))
    if dist.is_main():
        atomic_write_json(
            args.worker,
            {
                "processes": dist.world_size(),
                "threads_per_process": torch.get_num_threads(),
                "batch_per_process": cfg.train.batch_size,
                "global_batch": cfg.train.batch_size * dist.world_size(),
                "steps": args.steps,
                "seconds": round(seconds, 3),
                "steps_per_s": round(args.steps / seconds, 3),
                "windows_per_s": round(total / seconds, 1),
            },
        )


def measure(args: argparse.Namespace, processes: int, threads: int) -> dict[str, Any]:
    """Launch one measurement (torchrun for several processes) and read its result."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        script = [
            __file__,
            "--worker",
            str(result),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--device",
            args.device,
        ]
        launcher = [sys.executable]
        if processes > 1:
            launcher += [
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(processes),
            ]
        subprocess.run(launcher + script, env=env, check=True)
        return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return 0
    from adarec.evaluate.latency import machine_description
    from adarec.io import atomic_write_json
    from adarec.runtime.distributed import resolve_device

    load_before = [round(x, 2) for x in os.getloadavg()]
    single, several = f"1 process x {args.cores} threads", f"{args.cores} processes x 1 thread"
    runs = {
        single: measure(args, 1, args.cores),
        several: measure(args, args.cores, 1),
        "1 process x 1 thread": measure(args, 1, 1),
    }
    result = {
        "what": "teacher training throughput, quick SASRec on ml-100k (configs/quick.yaml)",
        "machine": machine_description(),
        "device": args.device,
        "backend": "nccl" if resolve_device(args.device).type == "cuda" else "gloo",
        "cores": args.cores,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "global_batch": {name: r["global_batch"] for name, r in runs.items()},
        "runs": runs,
        "ratio_processes_vs_threads": round(
            runs[several]["windows_per_s"] / runs[single]["windows_per_s"], 3
        ),
        "ratio_processes_vs_one_core": round(
            runs[several]["windows_per_s"] / runs["1 process x 1 thread"]["windows_per_s"], 3
        ),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    for name, r in runs.items():
        print(
            f"{name:30s} global batch {r['global_batch']:4d}  "
            f"{r['windows_per_s']:8.1f} windows/s  ({r['steps_per_s']:.2f} steps/s)"
        )
    print(
        f"{several} / {single}: {result['ratio_processes_vs_threads']:.2f}x; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
