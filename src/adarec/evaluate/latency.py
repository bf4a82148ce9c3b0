"""CPU/GPU latency of next-item scoring, measured the same way for every model.

Models are timed in one process, with the same threads and the same input batches, and
interleaved repeat by repeat so that a noisy neighbour slows all of them alike. Each repeat
calls them in a fresh (seeded) random order: a call runs in the caches its predecessor
left, and a fixed order gives every model the same predecessor every time. On ml-1m
(benchmarks/serving_paths.py, 2026-12-03), a fixed order timed two exports of one student
alike (0.713 and 0.708 ms at batch 1), the first called after a similar student and the
second after the teacher; a shuffled order found the second 12% faster (0.806, 0.706 ms).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn


def latency_inputs(histories: np.ndarray, batch_sizes: list[int]) -> dict[int, torch.Tensor]:
    """Batches of real histories (rows repeated when the split is smaller than a batch)."""
    rows = torch.as_tensor(histories, dtype=torch.long)
    out = {}
    for b in batch_sizes:
        reps = (b + len(rows) - 1) // len(rows)
        out[b] = rows.repeat(reps, 1)[:b].contiguous()
    return out


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def measure_latency(
    models: dict[str, nn.Module],
    inputs: dict[int, torch.Tensor],
    repeats: int = 30,
    warmup: int = 5,
    threads: int = 0,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {batch: {"median_ms", "p95_ms", "repeats"}}}`` for ``full_sort_predict``;
    ``seed`` draws the order of the calls within each repeat."""
    device = torch.device(device)
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        result: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
        for batch, items in inputs.items():
            items = items.to(device)
            calls = {}
            for name, model in models.items():
                model.to(device).eval()
                calls[name] = lambda m=model, x=items: m.full_sort_predict(x)
            times: dict[str, list[float]] = {name: [] for name in models}
            order = list(calls)
            shuffle = random.Random(seed).shuffle
            with torch.inference_mode():
                for _ in range(warmup):
                    for call in calls.values():
                        call()
                for _ in range(repeats):
                    shuffle(order)
                    for name in order:
                        times[name].append(_timed(calls[name], device))
            for name, values in times.items():
                result[name][str(batch)] = {
                    "median_ms": round(statistics.median(values), 4),
                    "p95_ms": round(float(np.percentile(values, 95)), 4),
                    "repeats": repeats,
                }
        return result
    finally:
        torch.set_num_threads(previous)


def machine_description() -> str:
    """A short name of the machine the numbers come from."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}{gpu}"
