"""The cost-sensitive loss L_E and its per-operation cost table.

The public release hard-coded the table (about 0.57 for k3 convs, 2.13 for k5 convs, 0.48
for pools, skip and none), described as the average of the softmax-normalised MACs and
parameter counts. Here the table is computed from the ops' real statistics at the run's
width and length, or from latency measured on this machine.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch import nn

# The statistics a cost table can be built from, in the order they are averaged.
COST_METRICS = ("macs", "params", "latency_ms")


def _softmax_normalise(values: list[float]) -> np.ndarray:
    """softmax of the standardised values times their count (mean 1; uniform for equal values)."""
    x = np.asarray(values, dtype=np.float64)
    std = x.std()
    if std == 0:
        return np.ones_like(x)
    z = (x - x.mean()) / std
    e = np.exp(z - z.max())
    return e / e.sum() * x.size


def cost_table(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    """Cost per op: the mean over metrics of the softmax-normalised statistic (mean cost 1).

    Uses every metric of ``COST_METRICS`` that all ops report, so MACs-and-parameters stats
    ({"macs", "params"}) and latency stats ({"latency_ms"}) both work; other keys are ignored.
    """
    ops = list(stats)
    if not ops:
        raise ValueError("cost table of an empty op set")
    metrics = [m for m in COST_METRICS if all(m in stats[op] for op in ops)]
    if not metrics:
        raise ValueError(f"op statistics report none of {COST_METRICS}")
    normalised = [_softmax_normalise([float(stats[op][m]) for op in ops]) for m in metrics]
    mean = np.mean(normalised, axis=0)
    return {op: float(c) for op, c in zip(ops, mean, strict=True)}


def latency_cost_table(latency_stats: dict[str, dict[str, float]]) -> dict[str, float]:
    """Cost per op from measured latency alone (``latency_cost_stats`` output), mean 1."""
    return cost_table({op: {"latency_ms": s["latency_ms"]} for op, s in latency_stats.items()})


def latency_cost_stats(
    op_names: list[str],
    width: int,
    length: int,
    repeats: int = 30,
    warmup: int = 3,
    ops: dict[str, nn.Module] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, float]]:
    """Median forward latency (ms) of each op on a [1, length, width] input on ``device``.

    Ops come from ``adarec.nas.operations.make_op`` unless ``ops`` maps the names to modules.
    Ops are interleaved within each repeat so a noisy neighbour slows all of them alike.
    """
    device = torch.device(device)
    if ops is None:
        from adarec.nas.operations import make_op  # the op zoo is only needed here

        ops = {name: make_op(name, width) for name in op_names}
    modules = {name: ops[name].to(device).eval() for name in op_names}
    x = torch.randn(1, length, width, device=device)
    times: dict[str, list[float]] = {name: [] for name in op_names}
    with torch.no_grad():
        for step in range(warmup + repeats):
            for name, module in modules.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                module(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if step >= warmup:
                    times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: {"latency_ms": statistics.median(t)} for name, t in times.items()}


def cost_loss(samples: list[torch.Tensor], costs: torch.Tensor) -> torch.Tensor:
    """L_E: sum over every sampled edge of <one-hot sample, cost>.

    ``samples``: one [inputs, |ops|] tensor per node (straight-through, so the gradient
    reaches the architecture parameters); ``costs``: [|ops|].
    """
    total = costs.new_zeros(())
    for sample in samples:
        total = total + (sample * costs.to(sample.dtype)).sum()
    return total


def format_cost_table(table: dict[str, float]) -> str:
    """One ``op  cost`` line per op, aligned, in the table's order."""
    width = max((len(op) for op in table), default=0)
    return "\n".join(f"{op:<{width}}  {cost:.3f}" for op, cost in table.items())
