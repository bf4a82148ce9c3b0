"""The accuracy-cost front of one search, and the rule that picks a student from it.

Everything here is pure (no files, no training): ``adarec.pipeline.front`` runs it.

- ``sweep_speedups``: the speed-ups over the teacher the front derives students at,
  geometric from ``LOWEST_SPEEDUP`` (about the teacher's cost) to the cheapest cell the
  space has.
- ``derive_sweep``: one student per speed-up from the search's architecture weights (the
  same greedy repair the search derives with), identical cells merged.
- ``dominated_by``: which candidates cannot be on the front (a cheaper one is better by
  more than one standard error), so only the others are retrained.
- ``retraining_order`` and ``RetrainingCap``: which candidates ``front.retrain: needed``
  retrains first, and when the front's time cap (``front.max_cost``) stops it.
- ``select_student``: the user's request (``keep``: a share of the teacher's validation
  NDCG@10; ``budget``: a cost limit) answered from validation metrics only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from adarec.config import Budget
from adarec.errors import UserError
from adarec.nas.budget import CostModel, derive_within_budget
from adarec.nas.genotype import Genotype

# The loosest speed-up of a sweep: "about the teacher's cost" (a speed-up must exceed 1x).
LOWEST_SPEEDUP = 1.1
# Relative tolerance of cost comparisons (sums of float op costs).
TOLERANCE = 1e-9


def round_down(value: float, digits: int = 3) -> float:
    """``value`` rounded down to ``digits`` significant digits (a readable budget that
    stays reachable: never above ``value``)."""
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"cannot round {value!r}")
    scale = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return round(math.floor(value / scale) * scale, 12)


def speedup_label(speedup: float) -> str:
    """The budget string of a speed-up, as ``parse_budget`` prints it ("12.3x")."""
    return f"{speedup:g}x"


def sweep_speedups(highest: float, count: int, include: Sequence[float] = ()) -> list[float]:
    """``count`` speed-ups, geometric from ``LOWEST_SPEEDUP`` to ``highest`` (the largest
    the space reaches), each rounded down to 3 significant digits, plus ``include`` (e.g.
    the search's own budget); ascending, without repeats. UserError when no cell of the
    space is cheaper than the teacher."""
    if count < 2:
        raise ValueError(f"a sweep needs at least 2 speed-ups, got {count}")
    top = round_down(highest) if highest > 1 else 1.0
    if top <= 1:
        raise UserError(
            f"no student of this space is cheaper than its teacher (largest speed-up "
            f"{highest:.3f}x): there is no front to build"
        )
    low = min(LOWEST_SPEEDUP, top)
    ratio = (top / low) ** (1 / (count - 1))
    points = {round_down(low * ratio**k) for k in range(count - 1)} | {top}
    points |= {s for s in include if 1 < s <= highest}
    return sorted(p for p in points if p > 1)


@dataclass(frozen=True)
class SweepPoint:
    """One distinct student of the sweep."""

    speedup: float  # the tightest swept speed-up that derived this cell (its label)
    speedups: tuple[float, ...]  # every swept speed-up that derived it
    genotype: Genotype
    cost: float  # modelled cost per history, in the cost model's unit

    @property
    def budget(self) -> str:
        return speedup_label(self.speedup)


def require_teacher_cost(model: CostModel) -> None:
    """UserError unless ``model`` knows the teacher's cost (speed-ups are over it)."""
    if model.teacher is None:
        raise UserError(
            "the front sweeps speed-ups over the teacher, and this search's cost model has no "
            "teacher cost (its budget was in MACs or ms); search with a speed-up budget ('5x')"
        )


def derive_sweep(
    alphas: list[torch.Tensor],
    op_names: list[str],
    argmax: Genotype,
    model: CostModel,
    speedups: Sequence[float],
) -> list[SweepPoint]:
    """The cell derived at each speed-up (``model``'s target moved to teacher / speed-up),
    identical cells merged; ordered by speed-up, so by cost from the dearest down.

    The repair is greedy and deterministic from the same argmax cell, so a tighter budget
    continues the switches of a looser one: cost never rises along the sweep.
    """
    require_teacher_cost(model)
    points: dict[Genotype, SweepPoint] = {}
    for speedup in sorted(speedups):
        target = replace(model, target=model.teacher / speedup, budget=speedup_label(speedup))
        genotype, _ = derive_within_budget(alphas, op_names, argmax, target)
        known = points.get(genotype)
        if known is None:
            points[genotype] = SweepPoint(
                speedup, (speedup,), genotype, model.of_genotype(genotype)
            )
        else:
            points[genotype] = replace(known, speedup=speedup, speedups=(*known.speedups, speedup))
    return sorted(points.values(), key=lambda p: p.speedup)


def dominated_by(
    costs: Sequence[float], values: Sequence[float], difference_se: Sequence[Sequence[float]]
) -> list[int | None]:
    """For each candidate, the index of one that dominates it, or None when it can be on
    the front.

    j dominates i when j costs no more (``costs``) and its value (estimated validation
    NDCG@10) is higher by more than one standard error of the difference
    (``difference_se[i][j]``; paired over the same users where possible). Of several, the
    one ahead by the most standard errors is named. A cheaper candidate within one
    standard error does not dominate: the estimate cannot tell them apart, so both are
    retrained.
    """
    result: list[int | None] = []
    for i, (cost_i, value_i) in enumerate(zip(costs, values, strict=True)):
        best, best_margin = None, 0.0
        for j, (cost_j, value_j) in enumerate(zip(costs, values, strict=True)):
            if j == i or cost_j > cost_i * (1 + TOLERANCE):
                continue
            gap, se = value_j - value_i, difference_se[i][j]
            if gap <= se:  # within one standard error, or worse: not told apart
                continue
            margin = gap / se if se > 0 else math.inf
            if best is None or margin > best_margin:
                best, best_margin = j, margin
        result.append(best)
    return result


def retraining_order(costs: Sequence[float], by_keep: bool) -> list[int]:
    """The order ``front.retrain: needed`` retrains candidates in (indices into ``costs``).

    With a keep (``by_keep``): the cheapest first (if it keeps, nothing dearer is needed),
    then the dearest (the most accurate the search offers: whether the keep is reachable at
    all, and the closest student when it is not), then the rest cheapest first. Without a
    keep (the most accurate within a budget): dearest first. Under a cost cap the order
    decides which candidates are retrained before the time runs out.
    """
    ascending = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    if not by_keep:
        return ascending[::-1]
    if len(ascending) <= 2:
        return ascending
    return [ascending[0], ascending[-1], *ascending[1:-1]]


@dataclass(frozen=True)
class RetrainingCap:
    """The front's time cap (``front.max_cost``): search plus front at most ``max_cost``
    times one search plus one retraining (issue 27), the retraining taken as the shortest
    one measured so far, and the next retraining predicted from its candidate's one-epoch
    estimate (seconds) times the retrained candidates' mean ratio of retraining to
    estimate seconds."""

    max_cost: float
    search_seconds: float

    def allows(
        self, spent: float, estimate_seconds: float, retrained: Sequence[tuple[float, float]]
    ) -> tuple[bool, float]:
        """Whether one more retraining fits, and its predicted seconds. ``spent``: the
        front's seconds so far (estimates and retrainings); ``retrained``: (estimate
        seconds, retraining seconds) of each candidate retrained so far. The first
        retraining always fits: it is the "one retraining" of the bound."""
        if not retrained:
            return True, math.nan
        ratio = sum(r / max(e, 1e-9) for e, r in retrained) / len(retrained)
        predicted = estimate_seconds * ratio
        reference = min(r for _, r in retrained)
        allowed = self.max_cost * (self.search_seconds + reference) - self.search_seconds
        return spent + predicted <= allowed, predicted


@dataclass(frozen=True)
class Candidate:
    """A retrained student as the selection sees it."""

    name: str
    valid: float  # validation NDCG@10 (full ranking): the only accuracy the rule reads
    cost: float  # modelled cost per history, in the search's unit
    macs: float
    latency_ms: float | None = None  # measured at batch 1 in the serving path


@dataclass(frozen=True)
class Selection:
    """What ``select_student`` decided, and why, in words a report can print."""

    name: str | None  # the selected student; None when nothing meets the request
    met: bool
    keep: float | None
    budget: str | None
    reason: str
    closest: str | None = None  # when nothing meets: the student nearest to the request

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "met": self.met,
            "keep": self.keep,
            "budget": self.budget,
            "reason": self.reason,
            "closest": self.closest,
        }


def within_budget(
    candidate: Candidate, budget: Budget, teacher_cost: float | None, unit: str
) -> bool:
    """Whether ``candidate`` meets ``budget``: a speed-up in the search's cost unit (as the
    search's own budget), MACs counted on the network, or ms measured at batch 1 in the
    serving path (the modelled ms when not measured and the search's unit is ms)."""
    if budget.kind == "speedup":
        if teacher_cost is None:
            raise UserError("a speed-up budget needs the teacher's cost; give MACs or ms")
        return teacher_cost / candidate.cost >= budget.value * (1 - TOLERANCE)
    if budget.kind == "macs":
        return candidate.macs <= budget.value * (1 + TOLERANCE)
    if candidate.latency_ms is not None:
        return candidate.latency_ms <= budget.value
    if unit == "ms":
        return candidate.cost <= budget.value * (1 + TOLERANCE)
    raise UserError(
        f"budget {budget} is in ms, and the students' latency was not measured "
        "(and the search's cost model counts MACs); give a speed-up or MACs"
    )


def _speed_key(candidates: Sequence[Candidate]) -> Any:
    """Lower is faster: measured batch-1 latency when every candidate has one, else the
    modelled cost (never a mix of the two)."""
    if all(c.latency_ms is not None for c in candidates):
        return lambda c: (c.latency_ms, c.cost)
    return lambda c: (c.cost, c.name)


def select_student(
    candidates: Sequence[Candidate],
    teacher_valid: float,
    keep: float | None,
    budget: Budget | None = None,
    teacher_cost: float | None = None,
    unit: str = "macs",
) -> Selection:
    """The student a user asked for, chosen on validation NDCG@10 only (test is never read).

    - ``keep`` alone: the fastest student whose validation NDCG@10 >= keep x the teacher's.
    - ``budget`` alone: the most accurate student within the budget.
    - both: the fastest within the budget that meets keep.
    When nothing meets the request, ``name`` is None and ``closest`` names the nearest
    student: the most accurate one (keep), the cheapest one (nothing within the budget),
    or the most accurate within the budget (both; the budget is the hard limit).
    """
    if not candidates:
        raise ValueError("no candidates to select from")
    if keep is None and budget is None:
        raise ValueError("give keep, budget or both")
    budget_text = None if budget is None else str(budget)
    fastest, accurate = _speed_key(candidates), (lambda c: (-c.valid, c.cost))
    threshold = None if keep is None else keep * teacher_valid
    fits = [c for c in candidates if budget is None or within_budget(c, budget, teacher_cost, unit)]

    def result(name: str | None, reason: str, closest: str | None = None) -> Selection:
        return Selection(name, name is not None, keep, budget_text, reason, closest)

    def share(c: Candidate) -> str:
        ratio = c.valid / teacher_valid if teacher_valid > 0 else math.inf
        return f"validation NDCG@10 {c.valid:.4f}, {ratio:.3f} of the teacher's"

    if not fits:
        cheapest = min(candidates, key=lambda c: (c.cost, c.macs))
        return result(
            None,
            f"no student is within the budget {budget_text}; the cheapest is {cheapest.name}",
            cheapest.name,
        )
    if threshold is None:
        best = min(fits, key=accurate)
        return result(best.name, f"the most accurate student within {budget_text} ({share(best)})")
    keeping = [c for c in fits if c.valid >= threshold]
    where = "" if budget is None else f" within the budget {budget_text}"
    if keeping:
        best = min(keeping, key=fastest)
        return result(
            best.name,
            f"the fastest student{where} that keeps {keep:g} of the teacher's validation "
            f"NDCG@10 ({teacher_valid:.4f}): {share(best)}",
        )
    closest = min(fits, key=accurate)
    return result(
        None,
        f"no student{where} keeps {keep:g} of the teacher's validation NDCG@10 "
        f"({teacher_valid:.4f} x {keep:g} = {threshold:.4f}); the closest is {closest.name} "
        f"({share(closest)})",
        closest.name,
    )
