"""The cost-sensitive loss L_E and its per-operation cost table.

The public release hard-coded the table (about 0.57 for k3 convs, 2.13 for k5 convs, 0.48
for pools, skip and none), described as the average of the softmax-normalised MACs and
parameter counts. Here the table is computed from the ops' real statistics at the run's
width and length, or from latency measured on this machine (``adarec.nas.profile``).
"""

from __future__ import annotations

import numpy as np
import torch

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
