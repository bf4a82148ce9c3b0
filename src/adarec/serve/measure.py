"""Measure runs side by side: load them, take the real test histories they kept, count MACs
and time them. ``adarec bench`` (every serving backend) and the pipeline's report (eager)
both measure through ``measure_runs``, so their numbers come from the same procedure.

Nothing here prepares data: the histories are the ones each stage wrote with its data files
(``test_histories.json``), so a run directory is measured alone, wherever it lies.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adarec.data.splits import left_pad
from adarec.errors import UserError
from adarec.evaluate.latency import latency_inputs, measure_latency
from adarec.io import read_json
from adarec.nas.profile import count_macs
from adarec.runs import HISTORIES_FILE, load_run_model, serving_file_hint
from adarec.serve.export import MODEL_FILES, export_run, run_items
from adarec.serve.predictor import (
    CompiledPaths,
    Scorer,
    compiles,
    load_torchscript,
    onnx_scorer,
)

# {label: {backend: {batch: {"median_ms", "p95_ms", "repeats"}}}}
Latency = dict[str, dict[str, dict[str, dict[str, float]]]]


@dataclass
class Measured:
    """What ``measure_runs`` found, per run label."""

    models: dict[str, tuple[nn.Module, dict[str, Any]]]  # the eager model and its spec
    macs: dict[str, int]  # multiply-accumulates of one real history (eager model)
    latency: Latency

    def medians(self) -> dict[str, dict[str, dict[str, float]]]:
        """{label: {backend: {batch: median_ms}}}: the figure every comparison divides."""
        return {
            label: {
                backend: {batch: stats["median_ms"] for batch, stats in per_batch.items()}
                for backend, per_batch in per_backend.items()
            }
            for label, per_backend in self.latency.items()
        }


class ScorerModule(nn.Module):
    """A scorer behind ``full_sort_predict``, the interface ``measure_latency`` times."""

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.scorer = scorer

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor:
        return self.scorer(items)


def run_histories(run_dir: Path, max_len: int, num_items: int) -> np.ndarray:
    """[histories, max_len] real test inputs that a run kept, left-padded with 0."""
    path = Path(run_dir) / HISTORIES_FILE
    hint = serving_file_hint(HISTORIES_FILE)
    if not path.is_file():
        raise UserError(f"{path} is missing (the real histories latency is timed on); {hint}")
    histories = read_json(path, list, hint)
    if not histories or not all(
        isinstance(history, list)
        and history
        and all(
            isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= num_items for i in history
        )
        for history in histories
    ):
        raise UserError(f"{path} is damaged (not lists of the model's item ids); {hint}")
    return left_pad([np.asarray(h, dtype=np.int64) for h in histories], max_len)


def _backend_models(
    model: nn.Module,
    run_dir: Path,
    backends: Sequence[str],
    tmp: Path,
    device: torch.device,
    threads: int,
) -> dict[str, nn.Module]:
    """The run's model under each backend; TorchScript and ONNX are exported into ``tmp``."""
    models: dict[str, nn.Module] = {}

    def exported(backend: str) -> nn.Module:
        if backend not in models:
            path = export_run(run_dir, backend, tmp / backend, device) / MODEL_FILES[backend]
            if backend == "torchscript":
                models[backend] = ScorerModule(load_torchscript(path, device))
            else:
                models[backend] = ScorerModule(onnx_scorer(path, device, threads))
        return models[backend]

    for backend in backends:
        if backend == "eager":
            models[backend] = model
        elif backend == "compiled" and compiles(model, device):
            models[backend] = ScorerModule(CompiledPaths.of(model).scorer())
        elif backend == "compiled":
            # A model without a compiled step (a teacher) is timed on its fastest path,
            # the frozen TorchScript graph: speed-ups are never over a slow teacher.
            models[backend] = exported("torchscript")
        else:
            exported(backend)
    return {backend: models[backend] for backend in backends}


def measure_runs(
    run_dirs: dict[str, Path],
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int,
    threads: int = 0,
    device: torch.device | str = "cpu",
    backends: Sequence[str] = ("eager",),
    histories_from: Path | None = None,
) -> Measured:
    """Load the runs (``{label: run directory}``), count MACs of one real history and time
    every run under every backend on the same batches of real test histories, all in this
    process and interleaved repeat by repeat.

    The runs must share their item catalogue and window length (the same data). The
    histories are those kept by ``histories_from`` (default: the first run).
    """
    device = torch.device(device)
    labels, dirs = list(run_dirs), [Path(d) for d in run_dirs.values()]
    loaded = {label: load_run_model(d, device) for label, d in zip(labels, dirs, strict=True)}
    num_items, max_len = loaded[labels[0]][1]["num_items"], loaded[labels[0]][1]["max_len"]
    items = run_items(dirs[0], num_items)
    for label, run_dir in zip(labels, dirs, strict=True):
        spec = loaded[label][1]
        if run_items(run_dir, spec["num_items"]) != items or spec["max_len"] != max_len:
            raise UserError(
                f"{run_dir} was trained on other data than {dirs[0]}; "
                "measure runs of the same dataset and max_len together"
            )
    histories = run_histories(histories_from or dirs[0], max_len, num_items)
    inputs = latency_inputs(histories, list(batch_sizes))

    timed: dict[str, nn.Module] = {}
    with tempfile.TemporaryDirectory(prefix="adarec-measure-") as tmp:
        for label, run_dir in zip(labels, dirs, strict=True):
            per_backend = _backend_models(
                loaded[label][0], run_dir, backends, Path(tmp) / label, device, threads
            )
            timed.update({f"{label}/{b}": m for b, m in per_backend.items()})
        latency = measure_latency(timed, inputs, repeats, warmup, threads, device)

    one = inputs[min(inputs)][:1].to(device)
    return Measured(
        models=loaded,
        macs={label: count_macs(m.full_sort_predict, one) for label, (m, _) in loaded.items()},
        latency={label: {b: latency[f"{label}/{b}"] for b in backends} for label in labels},
    )
