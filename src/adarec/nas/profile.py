"""Compute cost of models and ops: MACs (counted by PyTorch's FLOP counter), parameters, and
the latency of ops measured on this machine, on the runtime that serves them.

``FlopCounterMode`` counts matrix products and convolutions (2 FLOPs per multiply-add);
element-wise work such as norms, pooling and activations is not counted, so pools, skip
and none cost 0 MACs.

Latency has two runtimes (``adarec.nas.budget.serving_runtime``): "torch" times an op's
PyTorch module on a window; "compiled" times the compiled per-event step
(``adarec.nas.compiled_step``), which serves causal students on the CPU, over probe
students built of that op alone.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from adarec.nas.genotype import Genotype
from adarec.nas.operations import make_op

# Compiled-runtime timings run this many calls of a model in a row (``time_interleaved``).
COMPILED_BLOCK = 5
# Probe students of the compiled runtime: two cells of three nodes (12 edges), every edge one
# op, so an op's time over a window stands well above the timer's noise and its weights
# take the caches as a real student's do (one cell's probes predicted ~5% lower); a small
# catalogue, so the head (the same in every probe) adds little noise to the differences.
PROBE_NODES = 3
PROBE_ITEMS = 16
PROBE_CELLS = 2


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
    runtime: str = "torch",
) -> dict[str, dict[str, float]]:
    """Median latency (ms) of each op over a [1, length, width] window on ``device``.

    ``runtime`` "torch": the op's module forward; ops come from the op zoo (``make_op``)
    unless ``ops`` maps the names to modules. "compiled": one edge of the op in the
    compiled step over ``length`` events (``compiled_op_latency``; causal ops on the CPU).
    Ops are interleaved within each repeat so a noisy neighbour slows all of them alike.
    """
    if runtime == "compiled":
        if ops is not None or torch.device(device).type != "cpu":
            raise ValueError("the compiled runtime times the zoo's causal ops on the CPU")
        return compiled_op_latency(op_names, width, length, repeats, warmup)
    if runtime != "torch":
        raise ValueError(f"unknown latency runtime {runtime!r}")
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


def time_interleaved(
    calls: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    seed: int = 0,
    block: int = 1,
) -> dict[str, list[float]]:
    """Wall time (ms) per call of every call, per repeat.

    Each repeat runs ``block`` calls of each in a row (its time per call is their mean),
    the calls in a fresh random order (as ``adarec.evaluate.latency.measure_latency``), so
    a noisy neighbour falls on all of them alike. A block keeps a call in the caches it
    warms, as a server answering one model's requests does: alternating models instead
    evicts each other's weights (an ml-1m head is 1.3 MB) and times cold caches.
    """
    for _ in range(warmup):
        for call in calls.values():
            for _ in range(block):
                call()
    order = list(calls)
    shuffle = random.Random(seed).shuffle
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        shuffle(order)
        for name in order:
            call = calls[name]
            start = time.perf_counter()
            for _ in range(block):
                call()
            times[name].append((time.perf_counter() - start) * 1000.0 / block)
    return times


def paired_median(times: list[float], base: list[float]) -> float:
    """The median of per-repeat differences ``times - base``: a slow repeat (a neighbour's
    burst) moves both of a pair, so it cancels instead of landing in one median."""
    return statistics.median(t - b for t, b in zip(times, base, strict=True))


def probe_genotype(op: str, width: int, cells: int = 1) -> Genotype:
    """A causal cell of ``PROBE_NODES`` nodes with ``op`` on every edge."""
    nodes = tuple(tuple((i, op) for i in range(j + 1)) for j in range(PROBE_NODES))
    return Genotype("causal", nodes, cells, width)


def compiled_op_latency(
    op_names: list[str], width: int, length: int, repeats: int = 30, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """``{op: {"latency_ms"}}``: one edge of ``op`` over ``length`` events of the compiled
    step (the cost of one op on a window, as the compiled runtime runs it).

    Each op's probe student (``probe_genotype``) steps through ``length`` events in one
    compiled call, paired with the probe whose edges are all "none" (no op at all: same
    embedding, cell norms and head); the difference over the edges is the op's. "none"
    costs 0 (the step skips the edge). A difference below 0 (noise on a nearly free op,
    skip) is 0.
    """
    # Imported here: the serving runtime is built on the search's modules, not under them.
    from adarec.nas.compiled_step import CompiledStep
    from adarec.nas.student import Student

    edges = PROBE_CELLS * PROBE_NODES * (PROBE_NODES + 1) // 2
    items = np.arange(length, dtype=np.int64) % PROBE_ITEMS + 1
    names = list(dict.fromkeys(["none", *op_names]))
    calls = {}
    for name in names:
        genotype = probe_genotype(name, width, PROBE_CELLS)
        model = Student(PROBE_ITEMS, length, genotype, positions="none")
        step = CompiledStep(model.eval())
        calls[name] = lambda s=step: s.run(s.initial_state(), items, 0, 1)
    times = time_interleaved(calls, repeats, warmup, block=COMPILED_BLOCK)
    return {
        name: {
            "latency_ms": 0.0
            if name == "none"
            else max(paired_median(times[name], times["none"]) / edges, 0.0)
        }
        for name in op_names
    }
