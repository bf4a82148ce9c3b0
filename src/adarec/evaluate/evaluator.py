"""Score an evaluation split once and report full-ranking and sampled metrics together.

Under torchrun every rank scores its own contiguous shard of users; the ranks are gathered
in rank order, so every process computes exactly the single-process metrics.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from adarec.evaluate.metrics import (
    full_ranks,
    metrics_from_ranks,
    sampled_ranks,
    standard_errors,
)
from adarec.runtime import distributed


class Split(Protocol):
    """What the evaluator reads from a split (``adarec.data``'s ``EvalSplit`` has it)."""

    inputs: np.ndarray  # [U, L] int64, left-padded with 0
    targets: np.ndarray  # [U]
    negatives: np.ndarray  # [U, K] fixed sampled negatives
    histories: list[np.ndarray]  # items before the target, per user


def _long_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.int64)).to(device)


# Bounds the [users, N + 1] scores of one forward (2^26 floats: 256 MB), so that ranking
# a large catalogue scores fewer users at a time instead of more memory (ml-1m's 3,416
# items allow 19,000 users per forward: every eval.batch_size of the built-in data fits).
_SCORE_ELEMENTS = 1 << 26


def users_per_forward(model: nn.Module, batch_size: int) -> int:
    """``batch_size``, or fewer where a forward's scores over ``model.num_items`` + 1
    columns would exceed ``_SCORE_ELEMENTS`` (a model without ``num_items``: batch_size)."""
    num_items = getattr(model, "num_items", None)
    if not isinstance(num_items, int):
        return batch_size
    return max(1, min(batch_size, _SCORE_ELEMENTS // (num_items + 1)))


def _shard_ranks(
    model: nn.Module,
    split: Split,
    users: range,
    batch_size: int,
    device: torch.device,
    exclude_seen: bool,
) -> tuple[np.ndarray, np.ndarray]:
    full, sampled = [], []
    batch_size = users_per_forward(model, batch_size)
    for start in range(users.start, users.stop, batch_size):
        stop = min(users.stop, start + batch_size)
        scores = model.full_sort_predict(_long_tensor(split.inputs[start:stop], device))
        targets = _long_tensor(split.targets[start:stop], device)
        exclude = None
        if exclude_seen:
            exclude = [
                torch.as_tensor(np.asarray(h, dtype=np.int64)) for h in split.histories[start:stop]
            ]
        full.append(full_ranks(scores, targets, exclude).cpu().numpy())
        negatives = _long_tensor(split.negatives[start:stop], device)
        sampled.append(sampled_ranks(scores, targets, negatives).cpu().numpy())
    empty = np.zeros(0, dtype=np.int64)
    return (
        np.concatenate(full) if full else empty,
        np.concatenate(sampled) if sampled else empty,
    )


def compute_ranks(
    model: nn.Module,
    split: Split,
    batch_size: int,
    device: torch.device | str,
    exclude_seen: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Full and sampled 0-based ranks of every user's target, in user order, on every rank."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    users = distributed.shard_range(len(split.targets))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            local = _shard_ranks(model, split, users, batch_size, device, exclude_seen)
    finally:
        model.train(was_training)
    gathered = distributed.all_gather_objects(local)
    full = np.concatenate([part[0] for part in gathered]).astype(np.int64)
    sampled = np.concatenate([part[1] for part in gathered]).astype(np.int64)
    return full, sampled


def evaluate(
    model: nn.Module,
    split: Split,
    ks: list[int],
    batch_size: int,
    device: torch.device | str,
    exclude_seen: bool = False,
    with_ranks: bool = False,
) -> dict[str, Any]:
    """``{"full": metrics, "sampled": metrics, "exclude_seen", "num_users", "standard_error"}``.

    ``standard_error`` holds each metric's standard error over users, so that a reader can
    tell a real gap from noise (ml-100k has 943 test users: NDCG@10 is uncertain by ~0.007).
    ``with_ranks`` adds ``"ranks"``: every user's full-ranking rank, in user order, so that
    two models scored on the same users can be compared user by user (paired).
    """
    full, sampled = compute_ranks(model, split, batch_size, device, exclude_seen)
    result = {
        "full": metrics_from_ranks(full, ks),
        "sampled": metrics_from_ranks(sampled, ks),
        "exclude_seen": bool(exclude_seen),
        "num_users": int(len(full)),
        "standard_error": {
            "full": standard_errors(full, ks),
            "sampled": standard_errors(sampled, ks),
        },
    }
    if with_ranks:
        result["ranks"] = full.tolist()
    return result
