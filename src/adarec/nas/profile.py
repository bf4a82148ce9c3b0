"""Compute cost of models and ops: MACs (counted by PyTorch's FLOP counter), parameters, and
the latency of ops measured on this machine.

``FlopCounterMode`` counts matrix products and convolutions (2 FLOPs per multiply-add);
element-wise work such as norms, pooling and activations is not counted, so pools, skip
and none cost 0 MACs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from adarec.nas.operations import make_op


def count_macs(fn: Callable[..., Any], *inputs: Any) -> int:
    """Multiply-accumulates of one ``fn(*inputs)`` call (forward only), as the network is
    built: one operation per edge.

    Counted with autograd on, on the path training runs (each edge's own forward), so the
    count is the architecture's and not that of how a student is served (without
    gradients its cells serve convolutions from shared windows, ``StudentCell``).
    """
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return counter.get_total_flops() // 2


def op_cost_stats(
    op_names: list[str], width: int, length: int, op_set: str | None = None
) -> dict[str, dict[str, int]]:
    """``{op: {"macs", "params"}}`` of each op at ``width`` on a [1, length, width] input."""
    x = torch.randn(1, length, width)
    stats = {}
    for name in op_names:
        op = make_op(name, width, op_set).eval()
        stats[name] = {
            "macs": count_macs(op, x),
            "params": sum(p.numel() for p in op.parameters()),
        }
    return stats


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

    Ops come from the op zoo (``make_op``) unless ``ops`` maps the names to modules.
    Ops are interleaved within each repeat so a noisy neighbour slows all of them alike.
    """
    device = torch.device(device)
    if ops is None:
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
