"""Report helpers: the searched-vs-random comparison is computed correctly."""

from __future__ import annotations

import math

import pytest

from adarec.pipeline.report import searched_vs_random


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
