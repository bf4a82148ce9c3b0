"""``adarec bench``: size, MACs and latency of runs under every serving backend, side by side.

All runs and backends are measured by ``adarec.serve.measure.measure_runs``: in one process,
with the same threads and the same batches of real test histories (interleaved repeat by
repeat), as the pipeline's report is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from adarec.errors import UserError
from adarec.evaluate.latency import machine_description
from adarec.io import atomic_write_json, read_json
from adarec.models.base import count_parameters
from adarec.runs import read_metrics
from adarec.runtime.distributed import resolve_device
from adarec.serve.measure import measure_runs
from adarec.serve.predictor import BACKENDS


def _labels(names: list[str], run_dirs: list[Path]) -> list[str]:
    """Model names, with the directory added where two runs share a name, and the run's
    position where their directories share a name too (two ``.../student``)."""
    labels = [
        name if names.count(name) == 1 else f"{name}:{run_dir.name}"
        for name, run_dir in zip(names, run_dirs, strict=True)
    ]
    return [
        label if labels.count(label) == 1 else f"{label}#{i + 1}" for i, label in enumerate(labels)
    ]


def bench_runs(
    run_dirs: list[Path],
    threads: int = 1,
    batch_sizes: tuple[int, ...] = (1, 32, 256),
    repeats: int = 30,
    warmup: int = 5,
    backends: tuple[str, ...] = BACKENDS,
    device: str = "cpu",
) -> dict[str, Any]:
    """Parameters, MACs per history and latency per backend and batch size of each run.

    Speed-ups are the first run's median latency over each run's, backend by backend.
    """
    if not run_dirs:
        raise UserError("give at least one run directory")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    if not batch_sizes or any(b <= 0 for b in batch_sizes):
        raise UserError("batch sizes must be positive integers")
    if repeats <= 0 or warmup < 0 or threads < 0:
        raise UserError("--repeats must be positive, --warmup and --threads non-negative")
    run_dirs = [Path(r) for r in run_dirs]
    torch_device = resolve_device(device)
    metrics = [read_metrics(run_dir) for run_dir in run_dirs]
    labels = _labels([m["model"] for m in metrics], run_dirs)
    measured = measure_runs(
        dict(zip(labels, run_dirs, strict=True)),
        batch_sizes,
        repeats,
        warmup,
        threads,
        torch_device,
        backends,
    )
    runs = []
    for label, run_dir, m in zip(labels, run_dirs, metrics, strict=True):
        model, spec = measured.models[label]
        runs.append(
            {
                "label": label,
                "run_dir": str(run_dir),
                "kind": spec["kind"],
                "model": m["model"],
                "dataset": m["dataset"],
                "params": count_parameters(model),
                "macs_per_history": measured.macs[label],
                "test_ndcg10": m["test"]["full"].get("NDCG@10"),
                "latency": measured.latency[label],
            }
        )
    for run in runs:
        run["speedup"] = {
            b: {
                batch: round(runs[0]["latency"][b][batch]["median_ms"] / stats["median_ms"], 3)
                for batch, stats in run["latency"][b].items()
            }
            for b in backends
        }
    import onnxruntime

    return {
        "machine": machine_description(),
        "device": str(torch_device),
        "threads": threads,
        "batch_sizes": list(batch_sizes),
        "repeats": repeats,
        "warmup": warmup,
        "torch_version": torch.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "runs": runs,
    }


def format_bench_table(result: dict[str, Any]) -> str:
    """One row per run and backend: sizes, MACs, median (p95) latency and speed-up per batch."""
    batches = [str(b) for b in result["batch_sizes"]]
    header = f"{'model':<18}{'backend':<13}{'params':>11}{'body':>10}{'MACs/hist':>12}"
    header += "".join(f"{'batch ' + b + ' ms (p95)':>24}" for b in batches)
    lines = [header, "-" * len(header)]
    for run in result["runs"]:
        for backend, per_batch in run["latency"].items():
            line = (
                f"{run['label']:<18}{backend:<13}{run['params']['total']:>11,}"
                f"{run['params']['body']:>10,}{run['macs_per_history']:>12,}"
            )
            for b in batches:
                stats, speedup = per_batch[b], run["speedup"][backend][b]
                cell = f"{stats['median_ms']:.3f} ({stats['p95_ms']:.3f}) {speedup:.1f}x"
                line += f"{cell:>24}"
            lines.append(line)
    lines.append(
        f"{result['machine']}; {result['threads']} thread(s), {result['repeats']} repeats; "
        f"speed-up: the first run's median over each run's, per backend"
    )
    return "\n".join(lines)


def merge_results(path: Path, keys: Sequence[str], value: Any) -> None:
    """Set ``results[keys[0]][keys[1]]...`` in the JSON object in ``path`` (created if
    missing), keeping every other entry: e.g. ``("ml-1m", "bench")``."""
    path = Path(path)
    results = read_json(path) if path.is_file() else {}
    if not isinstance(results, dict):
        raise UserError(f"{path} does not hold a JSON object; choose another output file")
    node = results
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    atomic_write_json(path, results)
