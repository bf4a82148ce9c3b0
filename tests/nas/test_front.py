"""The front's pure parts: the sweep of speed-ups, derivation per budget, which candidates
can be on the front, the order and time cap of retraining, and the selection rule
(validation only; keep and budget)."""

from __future__ import annotations

import math

import pytest
import torch

from adarec.config import parse_budget
from adarec.errors import UserError
from adarec.nas.budget import CostModel
from adarec.nas.front import (
    LOWEST_SPEEDUP,
    Candidate,
    RetrainingCap,
    derive_sweep,
    dominated_by,
    retraining_order,
    round_down,
    select_student,
    sweep_speedups,
)
from adarec.nas.genotype import Genotype

OPS = ["none", "skip", "max_pool3", "conv3"]
COSTS = {"none": 0.0, "skip": 1.0, "max_pool3": 2.0, "conv3": 50.0}


def test_round_down_keeps_three_digits_and_never_rounds_up():
    assert round_down(12.3456) == 12.3
    assert round_down(0.0123456) == 0.0123
    assert round_down(999.99) == 999.0
    for value in (1.1, 2.3, 12.3, 57.0, 123.4567, 4.99999999):
        assert round_down(value) <= value


def test_sweep_spans_the_space_geometrically_and_includes_the_searched_budget():
    speedups = sweep_speedups(412.77, 8, include=[5.0])
    assert speedups == sorted(set(speedups))
    assert speedups[0] == LOWEST_SPEEDUP and speedups[-1] == 412.0 <= 412.77
    assert 5.0 in speedups and len(speedups) == 9
    plain = sweep_speedups(412.77, 8)
    assert len(plain) == 8
    ratios = [b / a for a, b in zip(plain, plain[1:], strict=False)]
    assert max(ratios) / min(ratios) < 1.05  # geometric, up to rounding to 3 digits
    # An included speed-up the space cannot reach is left out.
    assert 500.0 not in sweep_speedups(412.77, 8, include=[500.0])


def test_sweep_of_a_space_no_cheaper_than_its_teacher_is_refused():
    with pytest.raises(UserError, match="no student of this space is cheaper"):
        sweep_speedups(0.8, 8)
    assert sweep_speedups(1.05, 8) == [1.05]


def _model(teacher: float = 1000.0) -> CostModel:
    return CostModel("macs", 10.0, COSTS, 1, teacher / 5, "5x", teacher, None)


def _alphas(nodes: int = 3, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    alphas = [torch.randn(j + 1, len(OPS), generator=generator) for j in range(nodes)]
    for alpha in alphas:
        alpha[:, OPS.index("conv3")] += 3  # the argmax is the dearest cell: conv3 everywhere
    return alphas


def _argmax(alphas: list[torch.Tensor]) -> Genotype:
    nodes = tuple(tuple((i, OPS[int(row.argmax())]) for i, row in enumerate(a)) for a in alphas)
    return Genotype("causal", nodes, 1, 8)


def test_derive_sweep_is_monotone_in_cost_deduplicated_and_within_each_budget():
    model, alphas = _model(), _alphas()
    argmax = _argmax(alphas)
    speedups = sweep_speedups(model.teacher / model.cheapest(3), 10)
    points = derive_sweep(alphas, OPS, argmax, model, speedups)
    costs = [p.cost for p in points]
    assert costs == sorted(costs, reverse=True)  # tighter budget, never dearer
    assert len({p.genotype for p in points}) == len(points)  # identical cells merged
    merged = [s for p in points for s in p.speedups]
    assert sorted(merged) == speedups  # every swept speed-up lands on one point
    for point in points:
        assert point.speedup == max(point.speedups)  # labelled by its tightest budget
        assert point.budget == f"{point.speedup:g}x"
        assert point.cost == pytest.approx(model.of_genotype(point.genotype))
        assert point.cost <= model.teacher / point.speedup * (1 + 1e-9)
    assert points[0].genotype == argmax  # the loosest budgets keep the argmax cell
    assert all(op == "none" for node in points[-1].genotype.nodes for _, op in node)


def test_derive_sweep_needs_the_teachers_cost():
    model = CostModel("macs", 10.0, COSTS, 1, 200.0, "200M MACs", None, None)
    alphas = _alphas()
    with pytest.raises(UserError, match="speed-up budget"):
        derive_sweep(alphas, OPS, _argmax(alphas), model, [2.0])


def test_dominated_by_keeps_what_one_standard_error_cannot_separate():
    costs = [10.0, 5.0, 2.0, 1.0]
    values = [0.30, 0.32, 0.20, 0.25]
    se = [[0.01] * 4 for _ in range(4)]
    # 10 is beaten by the cheaper 5 (+0.02 > 0.01); 2 by the cheaper 1 (+0.05).
    assert dominated_by(costs, values, se) == [1, None, 3, None]
    # With a wider standard error nothing cheaper is better beyond it: all can be on it.
    wide = [[0.06] * 4 for _ in range(4)]
    assert dominated_by(costs, values, wide) == [None, None, None, None]
    # Of two dominators, the one ahead by the most standard errors is named.
    assert dominated_by([3.0, 2.0, 1.0], [0.1, 0.2, 0.3], [[0.01] * 3] * 3)[0] == 2
    # A dearer candidate never dominates, however good.
    assert dominated_by([1.0, 2.0], [0.1, 0.9], [[0.0, 0.0], [0.0, 0.0]]) == [None, None]


def _students() -> list[Candidate]:
    # name, valid, cost (MACs modelled), MACs, measured batch-1 ms
    return [
        Candidate("2x", 0.300, 500.0, 500.0, 2.0),
        Candidate("5x", 0.297, 200.0, 200.0, 1.0),
        Candidate("20x", 0.290, 50.0, 50.0, 0.5),
        Candidate("100x", 0.250, 10.0, 10.0, 0.4),
    ]


def test_keep_selects_the_fastest_that_keeps_the_teachers_validation_accuracy():
    selection = select_student(_students(), teacher_valid=0.300, keep=0.99)
    assert selection.name == "5x" and selection.met  # 0.297 >= 0.297; 20x (0.290) does not
    assert "fastest" in selection.reason and selection.closest is None
    assert select_student(_students(), 0.300, keep=0.96).name == "20x"
    assert select_student(_students(), 0.300, keep=0.5).name == "100x"


def test_fastest_is_measured_latency_when_every_student_has_one():
    students = _students()
    # Measured, 5x serves faster than 20x although it costs more MACs: latency decides.
    students[1] = Candidate("5x", 0.297, 200.0, 200.0, 0.3)
    assert select_student(students, 0.300, keep=0.96).name == "5x"
    # Without measurements, the modelled cost orders them.
    unmeasured = [Candidate(c.name, c.valid, c.cost, c.macs) for c in students]
    assert select_student(unmeasured, 0.300, keep=0.96).name == "20x"


def test_budget_alone_selects_the_most_accurate_within_it():
    selection = select_student(
        _students(), 0.300, keep=None, budget=parse_budget("10x"), teacher_cost=1000.0
    )
    assert selection.name == "20x" and selection.met  # 5x costs 200 > 1000 / 10
    macs = select_student(_students(), 0.300, None, parse_budget("200"), 1000.0)
    assert macs.name == "5x"
    ms = select_student(_students(), 0.300, None, parse_budget("0.45ms"), 1000.0)
    assert ms.name == "100x"  # measured batch-1 latency against a budget in ms


def test_keep_and_budget_combined_select_the_fastest_within_the_budget_that_keeps():
    both = select_student(
        _students(), 0.300, keep=0.96, budget=parse_budget("2x"), teacher_cost=1000.0
    )
    assert both.name == "20x"
    tight = select_student(_students(), 0.300, 0.96, parse_budget("50x"), 1000.0)
    assert tight.name is None and not tight.met
    assert tight.closest == "100x"  # the most accurate within the budget
    assert "no student within the budget 50x keeps 0.96" in tight.reason
    assert "100x" in tight.reason


def test_nothing_meets_keep_names_the_closest_student():
    selection = select_student(_students(), teacher_valid=0.400, keep=0.99)
    assert selection.name is None and not selection.met
    assert selection.closest == "2x"  # the most accurate
    assert "no student keeps 0.99" in selection.reason and "2x" in selection.reason


def test_nothing_within_the_budget_names_the_cheapest():
    selection = select_student(_students(), 0.300, None, parse_budget("1000x"), 1000.0)
    assert selection.name is None and selection.closest == "100x"
    assert "no student is within the budget 1000x" in selection.reason


def test_selection_reads_validation_only():
    # Candidates carry validation NDCG@10 and cost alone: there is no test value to read.
    assert set(Candidate.__dataclass_fields__) == {"name", "valid", "cost", "macs", "latency_ms"}
    with pytest.raises(ValueError, match="keep, budget or both"):
        select_student(_students(), 0.3, keep=None)


def test_retraining_order_with_a_keep_is_cheapest_dearest_then_the_rest_cheapest_first():
    costs = [500.0, 200.0, 50.0, 10.0, 120.0]
    assert retraining_order(costs, by_keep=True) == [3, 0, 2, 4, 1]
    assert retraining_order(costs, by_keep=False) == [0, 1, 4, 2, 3]  # dearest first
    assert retraining_order([5.0, 1.0], by_keep=True) == [1, 0]
    assert retraining_order([2.0, 2.0, 1.0], by_keep=True) == [2, 1, 0]  # ties: index order
    assert retraining_order([], by_keep=True) == []


def test_retraining_cap_predicts_from_the_estimates_and_bounds_search_plus_front():
    cap = RetrainingCap(max_cost=2.0, search_seconds=1000.0)
    fits, predicted = cap.allows(spent=200.0, estimate_seconds=40.0, retrained=[])
    assert fits and math.isnan(predicted)  # the first retraining is the bound's own
    # One retraining of 1000 s from a 40 s estimate: 25 s per estimate second; the front
    # may spend 2 x (1000 + 1000) - 1000 = 3000 s.
    fits, predicted = cap.allows(1200.0, 44.0, [(40.0, 1000.0)])
    assert fits and predicted == pytest.approx(1100.0)
    fits, predicted = cap.allows(2300.0, 40.0, [(40.0, 1000.0), (50.0, 1100.0)])
    assert predicted == pytest.approx(40.0 * (25.0 + 22.0) / 2)
    assert not fits  # 2300 + 940 > 3000
    # The shortest retraining is the bound's reference: a long one does not stretch the
    # 3000 s (predicted here: 1 s x a mean ratio of 75).
    assert cap.allows(2900.0, 1.0, [(40.0, 1000.0), (40.0, 5000.0)]) == (True, 75.0)
    assert cap.allows(2990.0, 1.0, [(40.0, 1000.0), (40.0, 5000.0)]) == (False, 75.0)
