"""Latency measurement: every model timed on every batch, in a fresh seeded order per repeat."""

import torch
from torch import nn

from adarec.evaluate.latency import latency_inputs, measure_latency


class Recorder(nn.Module):
    """Scores nothing; notes the order in which the models are called."""

    def __init__(self, name: str, calls: list[str]):
        super().__init__()
        self.name, self.calls = name, calls

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor:
        self.calls.append(self.name)
        return items.float()


def _orders(seed: int, repeats: int = 12, warmup: int = 2) -> list[tuple[str, ...]]:
    calls: list[str] = []
    names = ("teacher", "student", "pop")
    models = {name: Recorder(name, calls) for name in names}
    inputs = latency_inputs(torch.arange(1, 9).reshape(2, 4).numpy(), [1])
    result = measure_latency(models, inputs, repeats=repeats, warmup=warmup, seed=seed)
    assert all(result[name]["1"]["repeats"] == repeats for name in names)
    timed = calls[warmup * len(names) :]
    return [tuple(timed[i : i + len(names)]) for i in range(0, len(timed), len(names))]


def test_each_repeat_calls_every_model_once_in_a_seeded_random_order():
    orders = _orders(seed=0)
    assert len(orders) == 12
    assert all(sorted(order) == ["pop", "student", "teacher"] for order in orders)
    # Every model follows more than one other model (a fixed order gives each one only).
    predecessors = {name: set() for name in ("teacher", "student", "pop")}
    for order in orders:
        for before, after in zip(order, order[1:], strict=False):
            predecessors[after].add(before)
    assert all(len(p) == 2 for p in predecessors.values())
    assert _orders(seed=0) == orders
    assert _orders(seed=1) != orders
