import socket
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from adarec.evaluate import evaluator
from adarec.evaluate.evaluator import compute_ranks, evaluate
from adarec.evaluate.metrics import metrics_from_ranks
from adarec.runtime import distributed


@dataclass
class TinySplit:
    inputs: np.ndarray
    targets: np.ndarray
    negatives: np.ndarray
    histories: list[np.ndarray] = field(default_factory=list)


class LookupModel(nn.Module):
    """Scores are a fixed table row chosen by the last input item."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.modes_seen: list[bool] = []
        self.grad_enabled: list[bool] = []

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append(self.training)
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.table[items[:, -1]]


def _hand_case() -> tuple[LookupModel, TinySplit]:
    table = torch.zeros(6, 6)
    table[1] = torch.tensor([0.0, 0.9, 0.1, 0.5, 0.3, 0.2])
    table[2] = torch.tensor([5.0, 0.1, 0.1, 0.1, 0.1, 0.1])  # padding highest, items tied
    table[3] = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    split = TinySplit(
        inputs=np.array([[0, 2, 1], [3, 4, 2], [0, 0, 3]], dtype=np.int64),
        targets=np.array([3, 5, 3], dtype=np.int64),
        negatives=np.array([[2, 4], [1, 3], [4, 1]], dtype=np.int64),
        histories=[np.array([2, 1]), np.array([3, 4, 2]), np.array([3])],
    )
    return LookupModel(table), split


def test_compute_ranks_hand_computed():
    model, split = _hand_case()
    full, sampled = compute_ranks(model, split, batch_size=2, device="cpu")
    assert full.dtype == np.int64 and sampled.dtype == np.int64
    assert full.tolist() == [1, 4, 2]
    assert sampled.tolist() == [0, 2, 1]


def test_exclude_seen_changes_full_ranks_only():
    model, split = _hand_case()
    full, sampled = compute_ranks(model, split, batch_size=2, device="cpu", exclude_seen=True)
    # User 3's target repeats its history item 3 and stays a candidate.
    assert full.tolist() == [0, 1, 2]
    assert sampled.tolist() == [0, 2, 1]


def test_evaluate_result_shape():
    model, split = _hand_case()
    result = evaluate(model, split, ks=[1, 5], batch_size=8, device="cpu", exclude_seen=True)
    assert set(result) == {"full", "sampled", "exclude_seen", "num_users", "standard_error"}
    assert set(result["standard_error"]["full"]) == set(result["full"])
    assert result["exclude_seen"] is True
    assert result["num_users"] == 3
    assert result["full"] == metrics_from_ranks(np.array([0, 1, 2]), [1, 5])
    assert result["sampled"] == metrics_from_ranks(np.array([0, 2, 1]), [1, 5])
    assert result["full"]["HR@1"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("training", [True, False])
def test_scores_in_eval_mode_without_grad_and_restores_mode(training):
    model, split = _hand_case()
    model.train(training)
    compute_ranks(model, split, batch_size=1, device="cpu")
    assert model.modes_seen == [False, False, False]
    assert model.grad_enabled == [False, False, False]
    assert model.training is training


def _random_case(num_users=23, num_items=40, seed=0) -> tuple[LookupModel, TinySplit]:
    rng = np.random.default_rng(seed)
    # Each user's last input item selects its own row of scores; ties are frequent.
    table = torch.from_numpy(rng.integers(0, 6, size=(num_items + 1, num_items + 1))).float()
    inputs = rng.integers(1, num_items + 1, size=(num_users, 4))
    inputs[:, -1] = rng.permutation(num_items)[:num_users] + 1
    split = TinySplit(
        inputs=inputs,
        targets=rng.integers(1, num_items + 1, size=num_users),
        negatives=rng.integers(1, num_items + 1, size=(num_users, 7)),
        histories=[row[row > 0] for row in inputs],
    )
    return LookupModel(table), split


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_batch_size_invariance(exclude_seen):
    model, split = _random_case()
    reference = compute_ranks(model, split, 1, "cpu", exclude_seen)
    for batch_size in (4, 23, 100):
        full, sampled = compute_ranks(model, split, batch_size, "cpu", exclude_seen)
        assert np.array_equal(full, reference[0])
        assert np.array_equal(sampled, reference[1])


def test_large_catalogues_score_fewer_users_per_forward_with_the_same_ranks(monkeypatch):
    """Scores of a forward stay within _SCORE_ELEMENTS: users per forward shrink with the
    catalogue, and the ranks (ties against the target) do not change."""
    model, split = _random_case()
    reference = compute_ranks(model, split, 100, "cpu", True)
    model.num_items = model.table.shape[1] - 1
    rows = []
    original = model.full_sort_predict

    def recorded(items):
        rows.append(len(items))
        return original(items)

    model.full_sort_predict = recorded
    monkeypatch.setattr(evaluator, "_SCORE_ELEMENTS", 3 * model.table.shape[1])
    assert evaluator.users_per_forward(model, 100) == 3
    full, sampled = compute_ranks(model, split, 100, "cpu", True)
    assert max(rows) == 3 and sum(rows) == len(split.targets)
    assert np.array_equal(full, reference[0]) and np.array_equal(sampled, reference[1])
    assert evaluator.users_per_forward(model, 2) == 2  # never more than asked


def test_sharded_ranks_gathered_in_rank_order_match_single_process(monkeypatch):
    model, split = _random_case()
    expected = compute_ranks(model, split, 5, "cpu", True)
    world = 3
    monkeypatch.setattr(distributed, "world_size", lambda: world)

    # First pass: each simulated rank records what it would contribute to the gather.
    shards = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: [obj])
        shards.append(compute_ranks(model, split, 5, "cpu", True))
    assert sum(len(full) for full, _ in shards) == len(split.targets)
    assert all(len(full) > 0 for full, _ in shards)

    # Second pass: every rank receives all shards and must see the single-process ranks.
    monkeypatch.setattr(evaluator.distributed, "all_gather_objects", lambda obj: shards)
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        full, sampled = compute_ranks(model, split, 5, "cpu", True)
        assert np.array_equal(full, expected[0])
        assert np.array_equal(sampled, expected[1])


def test_rejects_bad_batch_size():
    model, split = _hand_case()
    with pytest.raises(ValueError):
        compute_ranks(model, split, batch_size=0, device="cpu")


def _gloo_worker(rank: int, world: int, port: int, queue) -> None:
    """One torchrun-like process: joins a gloo group and reports its gathered ranks."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model, split = _random_case()
        queue.put((rank, compute_ranks(model, split, 4, "cpu", True)))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model, split = _random_case()
    expected = compute_ranks(model, split, 4, "cpu", True)
    context = mp.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_gloo_worker, args=(r, 2, port, queue)) for r in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert sorted(r for r, _ in results) == [0, 1]
    for _, (full, sampled) in results:
        assert np.array_equal(full, expected[0])
        assert np.array_equal(sampled, expected[1])
