"""Compute cost of models and ops: MACs (counted by PyTorch's FLOP counter) and parameters.

``FlopCounterMode`` counts matrix products and convolutions (2 FLOPs per multiply-add);
element-wise work such as norms, pooling and activations is not counted, so pools, skip
and none cost 0 MACs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from adarec.nas.operations import make_op


def count_macs(fn: Callable[..., Any], *inputs: Any) -> int:
    """Multiply-accumulates of one ``fn(*inputs)`` call (forward only, without autograd)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
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
