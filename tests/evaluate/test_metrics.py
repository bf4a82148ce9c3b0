import math

import numpy as np
import pytest
import torch

from adarec.evaluate.metrics import full_ranks, metrics_from_ranks, sampled_ranks


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_full_ranks_hand_computed():
    scores = _t(
        [
            [0.0, 0.1, 0.9, 0.5, 0.3],  # target 2 is the best item
            [0.0, 0.1, 0.9, 0.5, 0.3],  # target 4: items 2 and 3 beat it
            [0.0, 0.1, 0.9, 0.5, 0.3],  # target 1 is the worst of 4 items
        ]
    )
    ranks = full_ranks(scores, torch.tensor([2, 4, 1]))
    assert ranks.dtype == torch.long
    assert ranks.tolist() == [0, 2, 3]


def test_ties_count_against_target():
    # Target 3 ties with items 1 and 4, item 2 is strictly better: 3 items at or above it.
    scores = _t([[0.0, 0.5, 0.8, 0.5, 0.5, 0.1]])
    assert full_ranks(scores, torch.tensor([3])).tolist() == [3]


def test_padding_column_never_ranked():
    scores = _t([[100.0, 0.2, 0.9, 0.1]])
    assert full_ranks(scores, torch.tensor([2])).tolist() == [0]
    assert sampled_ranks(scores, torch.tensor([2]), torch.tensor([[1, 0, 3]])).tolist() == [0]


def test_exclude_removes_history_but_not_target():
    scores = _t([[0.0, 0.9, 0.8, 0.7, 0.6, 0.5]])
    target = torch.tensor([4])
    assert full_ranks(scores, target).tolist() == [3]
    # Items 1 and 2 were seen; the target 4 was seen too but must stay a candidate.
    seen = [torch.tensor([1, 2, 4, 2])]
    assert full_ranks(scores, target, seen).tolist() == [1]


def test_exclude_per_row_and_empty_history():
    scores = _t([[0.0, 0.9, 0.8, 0.7], [0.0, 0.9, 0.8, 0.7]])
    targets = torch.tensor([3, 3])
    ranks = full_ranks(scores, targets, [torch.tensor([1]), torch.tensor([], dtype=torch.long)])
    assert ranks.tolist() == [1, 2]


def test_nan_scores_rank_last_not_first():
    scores = torch.full((2, 6), float("nan"))
    scores[1, 1:] = torch.tensor([0.1, float("nan"), 0.3, 0.4, 0.5])
    ranks = full_ranks(scores, torch.tensor([2, 1]))
    # All-NaN row: every other item ties the target. Row 2: NaN items fall below the target.
    assert ranks.tolist() == [4, 3]
    nan_target = full_ranks(scores[1:], torch.tensor([2]))
    assert nan_target.tolist() == [4]


def test_sampled_ranks_with_ties():
    scores = _t([[0.0, 0.5, 0.9, 0.5, 0.2, 0.5], [0.0, 0.5, 0.9, 0.5, 0.2, 0.5]])
    targets = torch.tensor([1, 2])
    negatives = torch.tensor([[3, 4, 5], [3, 4, 5]])
    # Row 1: items 3 and 5 tie the target, 4 is below. Row 2: the target beats all three.
    assert sampled_ranks(scores, targets, negatives).tolist() == [2, 0]


def test_sampled_ranks_ignore_target_among_negatives():
    scores = _t([[0.0, 0.5, 0.9, 0.1]])
    assert sampled_ranks(scores, torch.tensor([1]), torch.tensor([[1, 2, 3]])).tolist() == [1]


def test_sampled_ranks_refuse_zero_negatives():
    # With no competitor every target would rank first: a 1.0 that must never be reported.
    scores = _t([[0.0, 0.5, 0.9, 0.1]])
    with pytest.raises(ValueError, match="at least one negative"):
        sampled_ranks(scores, torch.tensor([1]), torch.zeros(1, 0, dtype=torch.long))


def test_constant_model_is_worst_case():
    num_items, batch = 150, 8
    scores = torch.zeros(batch, num_items + 1)
    targets = torch.randint(1, 31, (batch,))
    ranks = full_ranks(scores, targets)
    assert ranks.tolist() == [num_items - 1] * batch
    negatives = torch.arange(31, 131).expand(batch, -1)
    assert sampled_ranks(scores, targets, negatives).tolist() == [100] * batch
    metrics = metrics_from_ranks(ranks, [1, 5, 10, 20])
    assert metrics["NDCG@10"] == 0.0
    assert metrics["HR@20"] == 0.0
    assert metrics["MRR@20"] == 0.0


def test_perfect_model_scores_one():
    num_items, batch = 50, 16
    targets = torch.randint(1, num_items + 1, (batch,))
    scores = torch.rand(batch, num_items + 1)
    scores[torch.arange(batch), targets] = 2.0
    metrics = metrics_from_ranks(full_ranks(scores, targets), [1, 5, 10, 20])
    assert all(value == 1.0 for value in metrics.values())


def test_random_scores_hit_rate_near_k_over_n():
    generator = torch.Generator().manual_seed(0)
    batch, num_items = 4000, 200
    scores = torch.rand(batch, num_items + 1, generator=generator)
    targets = torch.randint(1, num_items + 1, (batch,), generator=generator)
    metrics = metrics_from_ranks(full_ranks(scores, targets), [10])
    # Expected 0.05; the standard error is about 0.0034.
    assert abs(metrics["HR@10"] - 10 / num_items) < 0.015


def test_chunking_matches_single_pass(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (37, 12), generator=generator).float()
    targets = torch.randint(1, 12, (37,), generator=generator)
    exclude = [torch.randint(1, 12, (3,), generator=generator) for _ in range(37)]
    expected = full_ranks(scores, targets, exclude)
    monkeypatch.setattr("adarec.evaluate.metrics._CHUNK_ELEMENTS", 5 * 12)
    assert torch.equal(full_ranks(scores, targets, exclude), expected)


def test_full_ranks_rejects_bad_targets():
    scores = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="padding"):
        full_ranks(scores, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="padding"):
        full_ranks(scores, torch.tensor([1, 4]))


def test_metric_formulas_at_several_k():
    metrics = metrics_from_ranks(np.array([0, 3, 12]), [1, 5, 10, 20])
    assert metrics["HR@1"] == pytest.approx(1 / 3)
    assert metrics["NDCG@1"] == pytest.approx(1 / 3)
    assert metrics["MRR@1"] == pytest.approx(1 / 3)
    assert metrics["HR@5"] == pytest.approx(2 / 3)
    assert metrics["NDCG@5"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert metrics["MRR@5"] == pytest.approx((1 + 1 / 4) / 3)
    assert metrics["HR@10"] == pytest.approx(2 / 3)
    assert metrics["HR@20"] == pytest.approx(1.0)
    assert metrics["NDCG@20"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(14)) / 3)
    assert metrics["MRR@20"] == pytest.approx((1 + 1 / 4 + 1 / 13) / 3)


def test_metric_keys_are_ordered_and_accept_tensors():
    metrics = metrics_from_ranks(torch.tensor([0, 1]), [10, 1, 5])
    assert list(metrics) == [
        "NDCG@1",
        "NDCG@5",
        "NDCG@10",
        "HR@1",
        "HR@5",
        "HR@10",
        "MRR@1",
        "MRR@5",
        "MRR@10",
    ]
    assert all(isinstance(value, float) for value in metrics.values())


def test_metrics_reject_empty_input_and_bad_k():
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([], dtype=np.int64), [1])
    with pytest.raises(ValueError):
        metrics_from_ranks(np.array([0]), [0])


def test_standard_errors_match_the_textbook_formula():
    from adarec.evaluate.metrics import standard_errors

    ranks = np.array([0, 3, 12, 1, 50])
    hits = (ranks < 10).astype(float)
    se = standard_errors(ranks, [10])
    assert se["HR@10"] == pytest.approx(hits.std(ddof=1) / np.sqrt(len(hits)))
    assert standard_errors(np.zeros(4), [5])["NDCG@5"] == 0.0
