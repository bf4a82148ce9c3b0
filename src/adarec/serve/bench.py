"""``adarec bench``: size, MACs and latency of runs under every serving backend, side by side.

All runs and backends are timed in one process with the same threads and the same batches
of real test histories (``measure_latency`` interleaves them repeat by repeat).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adarec.errors import UserError
from adarec.evaluate.latency import latency_inputs, machine_description, measure_latency
from adarec.io import atomic_write_json, read_json
from adarec.models.base import count_parameters
from adarec.runs import load_run_config, load_run_model, read_metrics
from adarec.runtime.distributed import resolve_device
from adarec.serve.export import MODEL_FILES, export_run, run_items
from adarec.serve.predictor import BACKENDS, Scorer, load_torchscript, onnx_scorer


class ScorerModule(nn.Module):
    """A scorer behind ``full_sort_predict``, the interface ``measure_latency`` times."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.scorer = scorer

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor:
        return self.scorer(items)


def real_histories(run_dir: Path, max_len: int) -> np.ndarray:
    """[users, max_len] test-split inputs of the run's dataset (real histories)."""
    from adarec.data.preprocess import prepare
    from adarec.data.splits import eval_split

    cfg = load_run_config(run_dir)
    return eval_split(prepare(cfg.data, cfg.seed), "test", max_len).inputs


def _labels(names: list[str], run_dirs: list[Path]) -> list[str]:
    """Model names, with the directory added where two runs share a name."""
    return [
        name if names.count(name) == 1 else f"{name}:{run_dir.name}"
        for name, run_dir in zip(names, run_dirs, strict=True)
    ]


def _backend_models(
    model: nn.Module,
    run_dir: Path,
    backends: list[str],
    tmp: Path,
    device: torch.device,
    threads: int,
) -> dict[str, nn.Module]:
    models: dict[str, nn.Module] = {}
    for backend in backends:
        if backend == "eager":
            models[backend] = model
            continue
        out = export_run(run_dir, backend, tmp / backend, device)
        path = out / MODEL_FILES[backend]
        if backend == "torchscript":
            models[backend] = ScorerModule(load_torchscript(path, device))
        else:
            models[backend] = ScorerModule(onnx_scorer(path, device, threads))
    return models


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
    from adarec.nas.profile import count_macs

    run_dirs = [Path(r) for r in run_dirs]
    torch_device = resolve_device(device)
    loaded = [load_run_model(run_dir, torch_device) for run_dir in run_dirs]
    items = run_items(run_dirs[0], loaded[0][1]["num_items"])
    max_len = loaded[0][1]["max_len"]
    for run_dir, (_, spec) in zip(run_dirs, loaded, strict=True):
        if run_items(run_dir, spec["num_items"]) != items or spec["max_len"] != max_len:
            raise UserError(
                f"{run_dir} was trained on other data than {run_dirs[0]}; "
                "bench runs of the same dataset and max_len together"
            )
    inputs = latency_inputs(real_histories(run_dirs[0], max_len), list(batch_sizes))
    metrics = [read_metrics(run_dir) for run_dir in run_dirs]
    labels = _labels([m["model"] for m in metrics], run_dirs)

    timed: dict[str, nn.Module] = {}
    with tempfile.TemporaryDirectory(prefix="adarec-bench-") as tmp:
        for label, run_dir, (model, _) in zip(labels, run_dirs, loaded, strict=True):
            per_backend = _backend_models(
                model, run_dir, list(backends), Path(tmp) / label, torch_device, threads
            )
            timed.update({f"{label}/{b}": m for b, m in per_backend.items()})
        latency = measure_latency(timed, inputs, repeats, warmup, threads, torch_device)

    one = inputs[min(inputs)][:1].to(torch_device)
    runs = []
    for label, run_dir, (model, spec), m in zip(labels, run_dirs, loaded, metrics, strict=True):
        runs.append(
            {
                "label": label,
                "run_dir": str(run_dir),
                "kind": spec["kind"],
                "model": m["model"],
                "dataset": m["dataset"],
                "params": count_parameters(model),
                "macs_per_history": count_macs(model.full_sort_predict, one),
                "test_ndcg10": m["test"]["full"].get("NDCG@10"),
                "latency": {b: latency[f"{label}/{b}"] for b in backends},
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
