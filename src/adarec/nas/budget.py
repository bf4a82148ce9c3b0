"""The search budget in real units, and the cost of an architecture (expected or derived).

A user states the budget as a speed-up over the teacher (``"5x"``), as MACs per history
(``"2.5M"``, ``"2500000 macs"``) or as milliseconds per history at batch 1 on this machine
(``"1.5ms"``), parsed with the rest of the configuration (``adarec.config.parse_budget``).
A speed-up is measured in the unit of ``search.cost``: MACs (the default: deterministic,
the same on every machine) or measured latency.

The cost of a student, per history it scores, is modelled as

    C = fixed + P(reach) * (sum over the cell's edges of cost(op) + cell_cost)

``fixed`` is the student without any edge (embedding, cell norms, head over the catalogue);
``cost(op)`` is one op applied to a whole window of ``max_len`` positions. ``P`` counts, in
windows, the positions that serving runs through the cells: ``Student.full_sort_predict``
reads only the receptive field, and cell k of K computes only the last
``(K - k) * reach + 1`` positions that later cells still read (``reach``: how far back one
cell reads, ``Genotype.cell_reach``). In MACs the model is then exactly what the student
counts when it scores a full history (``cell_cost`` 0). (Searches before this model charged
every cell the whole window, ``P = K``: 2.7 times the real cost of a 4-cell student of
pools and one dilated convolution on ml-1m, which kept wider cells out of every budget.
Their saved cost models have no ``max_len`` and keep that form.)

In milliseconds the ops are timed on the runtime that serves the student at batch 1
(``serving_runtime``; the cost model records it as ``runtime``, "torch" for those saved
before):
- "compiled" (causal students on the CPU: ``/recommend`` ranks one history with
  ``CompiledStep.rank``, one compiled call that steps every cell through each of the last
  ``T = min(K * reach + 1, max_len)`` items): no per-op dispatch, so an op costs its
  arithmetic per position and ``P = K * T / max_len``. Every cell also computes all of
  ``T`` (the step does not trim later cells as the torch forward does). ``cost(op)`` is
  one edge of the op over ``max_len`` events; ``cell_cost`` is what a cell costs per window
  without any edge (its norms, state shifts, and the embedding shared out over the cells),
  so an op that lengthens the reach also pays for the positions it adds. This ``P`` is
  measured, not assumed: on ml-1m's shape (3,416 items, width 96, 2 cells; random cells
  of 0.15-0.95 ms, benchmarks/latency_cost_model.py, a shared 2-core machine) it predicts
  the measured ``rank`` within 3-13% mean (max 7-24%) per round, while the same
  measurements in PyTorch with ``P = K`` gave 0.6-1.3 ms (1.5-4.7x over) and ranked the
  cells otherwise. The edge of a k3 conv costs ~2 us per position there, a pool or skip
  ~0.05 us, and the head with the top-10 ~30 us (``fixed``).
- "torch" (the paper's op set, and CUDA): ``P = K`` and ``cell_cost`` 0: at batch 1 an
  op's time in PyTorch is mostly its dispatch, which does not shrink with the positions.

The expected cost under the architecture distribution replaces each edge's op by the
softmax(alpha)-weighted mean of the op costs: it is differentiable in alpha at every step
(ProxylessNAS's expected latency), whatever op was sampled. Its ``P`` is that of the cell
derived from alpha at that step (a constant for the gradient).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from adarec.config import Budget, parse_budget
from adarec.errors import UserError
from adarec.evaluate.latency import measure_latency
from adarec.nas.genotype import Genotype, random_genotype
from adarec.nas.operations import left_reach
from adarec.nas.profile import COMPILED_BLOCK, count_macs, paired_median, time_interleaved

# The runtimes a latency is measured on (``serving_runtime``).
RUNTIMES = ("torch", "compiled")
# Items a batch-1 request asks for (the service's default k): the top-k pass is timed too.
SERVED_K = 10


def cost_unit(budget: Budget, cost_setting: str) -> str:
    """ "macs" or "ms": a budget in MACs or ms fixes the unit; a speed-up takes
    ``search.cost`` ("macs", or "latency" measured on this machine)."""
    if budget.kind != "speedup":
        return budget.kind
    return "macs" if cost_setting == "macs" else "ms"


def serving_runtime(op_set: str, device: torch.device | str) -> str:
    """The runtime that serves a student of ``op_set`` on ``device`` at batch 1: "compiled"
    for the causal op set on the CPU (as ``adarec.serve.predictor.compiles``), "torch"
    otherwise (the paper's centred ops cannot step per event; CUDA runs PyTorch)."""
    return "compiled" if op_set == "causal" and torch.device(device).type == "cpu" else "torch"


@dataclass
class CostModel:
    """Cost per history of a student of the search space, in ``unit`` (macs or ms)."""

    unit: str
    fixed: float
    op_costs: dict[str, float]
    cells: int
    target: float
    budget: str
    teacher: float | None = None
    max_len: int | None = None  # None: every cell pays the whole window (earlier searches)
    runtime: str = "torch"  # what the ms were measured on; cost models saved before: torch
    cell_cost: float = 0.0  # a cell without edges, per window (compiled runtime only)

    def cell_positions(self, reach: int) -> float:
        """``P``: the positions the cells compute for one history, in windows of max_len."""
        if self.unit == "ms" and self.runtime == "compiled" and self.max_len is not None:
            # Every cell steps through each item of the receptive field (module docstring).
            served = min(self.max_len, self.cells * reach + 1)
            return self.cells * served / self.max_len
        if self.max_len is None or self.unit != "macs":
            return float(self.cells)
        kept = (min(self.max_len, (self.cells - k) * reach + 1) for k in range(self.cells))
        return sum(kept) / self.max_len

    def cost_vector(self, op_names: list[str], device: torch.device | None = None) -> torch.Tensor:
        return torch.tensor([self.op_costs[o] for o in op_names], device=device)

    def expected(self, alphas: list[torch.Tensor], op_names: list[str], reach: int) -> torch.Tensor:
        """E[C] under softmax(alpha) on every edge (differentiable in alpha); ``reach``: the
        derived cell's (``Genotype.cell_reach``)."""
        costs = self.cost_vector(op_names, alphas[0].device)
        edges = sum((torch.softmax(a, dim=-1) * costs).sum() for a in alphas)
        return self.fixed + self.cell_positions(reach) * (edges + self.cell_cost)

    def of_genotype(self, genotype: Genotype) -> float:
        """The modelled cost of a derived cell used in every cell."""
        if genotype.cells != self.cells:
            raise ValueError(f"a {genotype.cells}-cell genotype in a {self.cells}-cell model")
        edges = sum(self.op_costs[op] for node in genotype.nodes for _, op in node)
        return self.fixed + self.cell_positions(genotype.cell_reach()) * (edges + self.cell_cost)

    def within(self, cost: float) -> bool:
        """Whether ``cost`` meets the target (up to float rounding of the sums)."""
        return cost <= self.target * (1 + 1e-9)

    def cheapest(self, nodes: int) -> float:
        """The lowest cost any cell of the space can have (every edge on its cheapest op)."""
        edges = nodes * (nodes + 1) // 2
        cheapest = edges * min(self.op_costs.values())
        return self.fixed + self.cell_positions(0) * (cheapest + self.cell_cost)

    def require_reachable(self, nodes: int, what: str, advice: str) -> None:
        """UserError naming ``what`` (the budget's config key) if no cell of the space fits
        the target; the message gives the largest speed-up the space reaches."""
        floor = self.cheapest(nodes)
        if self.target >= floor:
            return
        reachable = "" if self.teacher is None else f", at most {self.teacher / floor:.1f}x"
        raise UserError(
            f"{what} {self.budget} ({format_cost(self.target, self.unit)} per history) is "
            f"below the cheapest student of this space ({format_cost(floor, self.unit)}: "
            f"embedding and head alone{reachable}); {advice}"
        )

    def with_speedup(self, budget: str, what: str) -> CostModel:
        """This model with its target moved to ``budget``, a speed-up over its teacher
        (UserError naming ``what`` otherwise)."""
        parsed = parse_budget(budget)
        if parsed.kind != "speedup" or self.teacher is None:
            raise UserError(
                f"{what} takes a speed-up over the teacher ('15x') of a search budgeted "
                f"against it; got {budget!r}"
            )
        return replace(self, target=self.teacher / parsed.value, budget=str(parsed))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def full_history(num_items: int, max_len: int) -> torch.Tensor:
    """One history that fills the window (items 1, 2, ... cycling), [1, max_len]."""
    return (torch.arange(max_len) % num_items + 1).unsqueeze(0)


def model_cost(
    model: nn.Module, num_items: int, max_len: int, unit: str, runtime: str = "torch"
) -> float:
    """What one full-window history costs ``model`` in ``unit`` (MACs, or ms at batch 1 on
    ``runtime``: ``full_sort_predict`` in PyTorch, or ``CompiledStep.rank``)."""
    history = full_history(num_items, max_len).to(next(model.parameters()).device)
    if unit == "macs":
        was_training = model.training
        model.eval()
        macs = count_macs(model.full_sort_predict, history)
        model.train(was_training)
        return float(macs)
    if runtime == "compiled":
        return compiled_rank_ms(model, num_items, max_len)
    timed = measure_latency({"model": model}, {1: history}, device=history.device)
    return timed["model"]["1"]["median_ms"]


def compiled_step(model: nn.Module) -> Any:
    """``model``'s compiled step (built from its eval-mode weights; its mode is kept)."""
    from adarec.nas.compiled_step import CompiledStep  # serving is built on nas, not under

    was_training = model.training
    step = CompiledStep(model.eval())
    model.train(was_training)
    return step


def compiled_rank_ms(
    model: nn.Module, num_items: int, max_len: int, repeats: int = 30, warmup: int = 3
) -> float:
    """Median ms of ``CompiledStep.rank`` of a full-window history (what ``/recommend``
    runs for one history, top ``SERVED_K``)."""
    step = compiled_step(model)
    history = full_history(num_items, max_len)[0].tolist()
    call = {"rank": lambda: step.rank(history, SERVED_K)}
    times = time_interleaved(call, repeats, warmup, block=COMPILED_BLOCK)
    return statistics.median(times["rank"])


def compiled_fixed_costs(
    empty_student: nn.Module, num_items: int, max_len: int, repeats: int = 30, warmup: int = 3
) -> tuple[float, float]:
    """(``fixed``, ``cell_cost``) in ms on the compiled runtime, from a student without edges.

    Its ``rank`` steps one item (its receptive field); stepping a whole window of
    ``max_len`` items in the same call costs ``max_len - 1`` positions more, paired per
    repeat. A position's cost (embedding, each cell's norms and state) shared out over the
    cells is ``cell_cost`` per window; ``fixed`` is the rank less its one position.
    """
    step = compiled_step(empty_student)
    history = full_history(num_items, max_len)[0].tolist()
    window = np.asarray(history, dtype=np.int64)
    calls = {
        "rank": lambda: step.rank(history, SERVED_K),
        "window": lambda: step.run(step.initial_state(), window, 0, SERVED_K),
    }
    times = time_interleaved(calls, repeats, warmup, block=COMPILED_BLOCK)
    position = max(paired_median(times["window"], times["rank"]), 0.0) / (max_len - 1)
    cells = len(empty_student.cells)
    return statistics.median(times["rank"]) - position, position * max_len / cells


def build_cost_model(
    budget: Budget,
    unit: str,
    op_stats: dict[str, dict[str, float]],
    empty_student: nn.Module,
    cells: int,
    nodes: int,
    num_items: int,
    max_len: int,
    teacher: nn.Module | None = None,
    runtime: str = "torch",
) -> CostModel:
    """The cost model of a search at this width and length, with the budget's target.

    ``unit``: "macs" or "latency" (``search.cost``); a budget in MACs or ms fixes the unit
    itself. ``op_stats``: per op "macs" (``op_cost_stats``) or "latency_ms"
    (``latency_cost_stats``, measured on ``runtime``) on a [1, max_len, width] window.
    ``empty_student``: a student whose every edge is "none" (its cost is the fixed part).
    ``runtime`` (ms only): what serves the student (``serving_runtime``); the teacher is
    timed in PyTorch, which serves it (``teacher`` is needed by a speed-up; with a budget
    in MACs or ms it is optional, and the budget must then be below its cost). UserError
    if the budget is below the cheapest student of the space or not below the teacher.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown latency runtime {runtime!r}; choose one of {RUNTIMES}")
    unit = cost_unit(budget, unit)
    key = "macs" if unit == "macs" else "latency_ms"
    missing = [op for op, s in op_stats.items() if key not in s]
    if missing:
        raise ValueError(f"op statistics lack {key!r} for {missing}")
    op_costs = {op: float(s[key]) for op, s in op_stats.items()}
    runtime = runtime if unit == "ms" else "torch"  # MACs are counted on the torch graph
    cell_cost = 0.0
    if runtime == "compiled":
        fixed, cell_cost = compiled_fixed_costs(empty_student, num_items, max_len)
    else:
        fixed = model_cost(empty_student, num_items, max_len, unit)
    teacher_cost = None
    if teacher is not None:
        teacher_cost = model_cost(teacher, num_items, max_len, unit)
    if budget.kind == "speedup":
        if teacher_cost is None:
            raise ValueError("a speed-up budget needs the teacher")
        target = teacher_cost / budget.value
    else:
        target = budget.value
        if teacher_cost is not None and target >= teacher_cost:
            # A student allowed the teacher's cost is no compression (issue 29: "5m" was
            # 32 times the teacher of a small scene); a speed-up is relative by design.
            raise UserError(
                f"search.budget {budget} ({format_cost(target, unit)} per history) is not "
                f"below the teacher's cost ({format_cost(teacher_cost, unit)}); give a "
                "budget below it, or a speed-up over the teacher ('5x')"
            )
    model = CostModel(
        unit,
        fixed,
        op_costs,
        cells,
        target,
        str(budget),
        teacher_cost,
        max_len,
        runtime=runtime,
        cell_cost=cell_cost,
    )
    model.require_reachable(nodes, "search.budget", "raise the budget or lower search.width")
    return model


def format_cost(value: float, unit: str) -> str:
    return f"{value / 1e6:.3f} MMACs" if unit == "macs" else f"{value:.3f} ms"


def _carries(op: str) -> int:
    """How much of the history an op passes on: its reach, and less than a skip for "none"."""
    return -1 if op == "none" else left_reach(op)


def _most_carrying(savings: dict[str, float]) -> dict[str, float]:
    """Of the candidate ops that save the same cost (up to float rounding), those that
    carry the most (``_carries``); candidates that save different costs all stay."""
    kept = {}
    for candidate, saved in savings.items():
        same = [c for c, s in savings.items() if abs(s - saved) <= 1e-9 * max(abs(saved), 1.0)]
        if _carries(candidate) == max(_carries(c) for c in same):
            kept[candidate] = saved
    return kept


def derive_within_budget(
    alphas: list[torch.Tensor],
    op_names: list[str],
    genotype: Genotype,
    model: CostModel,
) -> tuple[Genotype, list[str]]:
    """The argmax genotype, repaired until its modelled cost meets the target.

    While the cell is over budget, the one edge switch to a cheaper op that gives up the
    least log-probability per unit of cost saved is made (a greedy knapsack step); returns
    the genotype and one line per switch. The space's cheapest cell always fits, as
    ``build_cost_model`` checked, so the loop ends.

    Cheaper ops that save exactly as much on an edge are a choice the budget does not
    make: of those, only the ones that carry the most (a pool reads back as far as the
    convolution it replaces; a skip passes its input; "none" carries nothing) compete on
    log-probability. In MACs a pool, a skip and "none" all cost nothing, and choosing among
    them by the architecture weights alone emptied the cheapest cells: on the synthetic
    order scene the front's cheapest cell (skips and "none") scored test NDCG@10 0.106
    against 0.685 for random pool cells of the same cost, on ml-100k 0.054 against 0.067.
    """
    log_probs = [torch.log_softmax(a.detach().float().cpu(), dim=-1) for a in alphas]
    nodes = [list(node) for node in genotype.nodes]
    changes = []

    def cost(cell: list[list[tuple[int, str]]]) -> float:
        cell_nodes = tuple(tuple(n) for n in cell)
        return model.of_genotype(
            Genotype(genotype.op_set, cell_nodes, genotype.cells, genotype.width)
        )

    while not model.within(current := cost(nodes)):
        best = None
        for j, node in enumerate(nodes):
            for e, (i, op) in enumerate(node):
                savings = {}
                for candidate in op_names:
                    if model.op_costs[candidate] >= model.op_costs[op]:
                        continue
                    # The whole cell's saving: a cheaper op can also shorten the reach.
                    switched = [list(n) for n in nodes]
                    switched[j][e] = (i, candidate)
                    saved = current - cost(switched)
                    if saved > 0:
                        savings[candidate] = saved
                for candidate, saved in _most_carrying(savings).items():
                    k = op_names.index(candidate)
                    loss = float(log_probs[j][i, op_names.index(op)] - log_probs[j][i, k])
                    score = loss / saved
                    if best is None or score < best[0]:
                        best = (score, j, e, candidate)
        if best is None:  # nothing cheaper anywhere: cannot happen above the floor
            break
        _, j, e, candidate = best
        i, op = nodes[j][e]
        nodes[j][e] = (i, candidate)
        changes.append(f"node_{j} edge from input {i}: {op} -> {candidate} (budget)")
    repaired = Genotype(
        genotype.op_set, tuple(tuple(n) for n in nodes), genotype.cells, genotype.width
    )
    return repaired, changes


def random_genotype_within_budget(
    model: CostModel, op_set: str, nodes: int, cells: int, width: int, seed: int
) -> Genotype:
    """A uniformly random cell among those that meet the budget (rejection sampling).

    Draws cells as ``random_genotype`` does (every edge an op other than "none") until one
    fits, so each feasible cell is equally likely: the sanity baseline of Li & Talwalkar
    (2019), random architectures under the same constraint, trained identically.
    """
    for attempt in range(100_000):
        genotype = random_genotype(op_set, nodes, cells, width, seed=seed * 100_003 + attempt)
        if model.within(model.of_genotype(genotype)):
            return genotype
    raise UserError(
        f"no random cell of the space met the budget {model.budget} in 100,000 draws; "
        "the budget leaves room for the cheapest cells only"
    )
