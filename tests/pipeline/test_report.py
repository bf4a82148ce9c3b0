"""Report helpers: the searched-vs-random comparison and the targets are computed correctly."""

from __future__ import annotations

import math

import pytest

from adarec.pipeline.report import check_targets, paired_standard_error, searched_vs_random


def _metrics(ndcg: float, se: float | None = None) -> dict:
    test = {"full": {"NDCG@10": ndcg}}
    if se is not None:
        test["standard_error"] = {"full": {"NDCG@10": se}}
    return {"test": test}


def test_searched_vs_random_by_hand():
    result = searched_vs_random(_metrics(0.30, 0.01), [_metrics(v) for v in (0.20, 0.25, 0.30)])
    assert result["random_mean"] == pytest.approx(0.25)
    # sample standard deviation 0.05, three cells: standard error 0.05 / sqrt(3)
    assert result["random_se"] == pytest.approx(0.05 / math.sqrt(3))
    assert result["difference"] == pytest.approx(0.05)
    assert result["difference_se"] == pytest.approx(math.sqrt(0.05**2 / 3 + 0.01**2))
    assert result["beats"] is True
    assert result["random"] == [0.20, 0.25, 0.30]


def test_searched_below_the_random_mean_does_not_beat_chance():
    result = searched_vs_random(_metrics(0.21), [_metrics(v) for v in (0.20, 0.25, 0.30)])
    assert result["beats"] is False
    assert result["searched_se"] == 0.0
    assert result["difference"] == pytest.approx(-0.04)


def test_one_random_cell_is_not_a_comparison():
    with pytest.raises(ValueError, match="two random cells"):
        searched_vs_random(_metrics(0.3), [_metrics(0.2)])


def _ndcg10(ranks: list[int]) -> float:
    return sum(1 / math.log2(r + 2) if r < 10 else 0.0 for r in ranks) / len(ranks)


def test_paired_comparison_cancels_the_users_every_model_finds_hard():
    # Half the users are easy (rank 0) and half hard (rank 50) for every model; the random
    # cells miss one easy user in five (rank 1). Each model's own error over users is
    # large (about 0.07), the paired one only reflects where the models differ.
    searched = [0] * 50 + [50] * 50
    randoms = [[1 if u % 5 == k else 0 for u in range(50)] + [50] * 50 for k in (0, 1)]
    own_se = 0.5 / math.sqrt(99)  # gains 1 or 0 half and half (sample standard deviation)
    result = searched_vs_random(
        _metrics(_ndcg10(searched), own_se),
        [_metrics(_ndcg10(r)) for r in randoms],
        ranks=(searched, randoms),
    )
    assert result["paired"] is True
    assert result["test_se"] < own_se / 5
    assert result["difference"] > 0
    unpaired = searched_vs_random(
        _metrics(_ndcg10(searched), own_se), [_metrics(_ndcg10(r)) for r in randoms]
    )
    assert unpaired["test_se"] == own_se and unpaired["paired"] is False


def test_paired_standard_error_by_hand():
    # Ranks 0 (gain 1) or 20 (gain 0): per-user differences 1, 0, -1, 0 against the mean of
    # the two random cells.
    searched = [0, 20, 20, 0]
    randoms = [[20, 20, 0, 0], [20, 20, 0, 0]]
    difference = [1.0, 0.0, -1.0, 0.0]
    mean = sum(difference) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in difference) / 3)
    assert paired_standard_error(searched, randoms) == pytest.approx(sd / 2)
    with pytest.raises(ValueError, match="same users"):
        paired_standard_error(searched, [[0, 0, 0]])


def test_significance_needs_two_standard_errors():
    randoms = [_metrics(v) for v in (0.20, 0.21, 0.22)]  # mean 0.21, se 0.01 / sqrt(3)
    assert searched_vs_random(_metrics(0.215), randoms)["significant"] is False
    assert searched_vs_random(_metrics(0.23), randoms)["significant"] is True


def _model(ndcg: float, body_params: int) -> dict:
    return {"test": {"full": {"NDCG@10": ndcg}}, "params": {"body": body_params}}


def test_speedup_targets_take_the_backend_that_does_best_per_batch():
    teacher, student = _model(0.20, 1000), _model(0.19, 50)
    speedups = {
        "eager": {"1": 1.3, "256": 8.0},
        "torchscript": {"1": 2.4, "256": 6.0},
    }
    t = check_targets(teacher, student, speedups)
    assert t["ndcg_ratio"] == 0.95 and t["ndcg_ratio_met"]
    assert t["body_params_ratio"] == 20.0 and t["body_params_ratio_met"]
    assert (t["speedup_256"], t["speedup_256_backend"], t["speedup_256_met"]) == (
        8.0,
        "eager",
        True,
    )
    assert (t["speedup_1"], t["speedup_1_backend"], t["speedup_1_met"]) == (
        2.4,
        "torchscript",
        True,
    )
    assert t["speedup_met"]
    # Eager alone misses batch 1's 2x: the speed-ups are then not all met.
    eager_only = check_targets(teacher, student, {"eager": speedups["eager"]})
    assert not eager_only["speedup_1_met"] and not eager_only["speedup_met"]
    # A batch size that was not measured has no target line.
    large_only = check_targets(teacher, student, {"eager": {"256": 3.0}})
    assert "speedup_1" not in large_only
    assert large_only["speedup_256_target"] == 5.0 and not large_only["speedup_met"]
