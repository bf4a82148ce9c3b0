"""Ranks of the target item and the ranking metrics computed from them.

A rank is 0-based and pessimistic: the number of OTHER candidate items whose score is
greater than or equal to the target's, so ties count against the target and a model that
scores everything alike ranks the target last rather than first. NaN scores are treated as
-inf (for the target as well), so a broken model cannot look good. Column 0 of the scores
(the padding item) is never a candidate.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

# Bounds the [rows, N+1] temporaries of ``full_ranks`` (about 2^24 elements per chunk).
_CHUNK_ELEMENTS = 1 << 24


def _nan_to_neg_inf(scores: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(torch.isnan(scores), float("-inf"))


def _check_targets(targets: torch.Tensor, batch: int, num_items: int) -> None:
    if targets.shape != (batch,):
        raise ValueError(f"targets must have shape [{batch}], got {list(targets.shape)}")
    if batch and bool(((targets < 1) | (targets > num_items)).any()):
        raise ValueError(f"targets must be item ids in 1..{num_items} (0 is padding)")


def _candidate_mask(
    targets: torch.Tensor, num_columns: int, exclude: Sequence[torch.Tensor] | None
) -> torch.Tensor:
    """[B, N+1] bool: True where a column competes with the target."""
    batch, device = targets.shape[0], targets.device
    mask = torch.ones(batch, num_columns, dtype=torch.bool, device=device)
    mask[:, 0] = False
    if exclude is not None:
        lengths = torch.tensor([e.numel() for e in exclude], dtype=torch.long)
        if int(lengths.sum()) > 0:
            cols = torch.cat([e.reshape(-1).long().cpu() for e in exclude])
            rows = torch.repeat_interleave(torch.arange(batch), lengths)
            mask[rows.to(device), cols.to(device)] = False
    # The target is never its own competitor (it may also appear in the excluded history).
    mask[torch.arange(batch, device=device), targets] = False
    return mask


def full_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Pessimistic 0-based rank of each target among all items 1..N.

    ``scores`` is [B, N+1] (column 0 is padding and ignored), ``targets`` is [B] with ids in
    1..N, ``exclude`` is an optional list of B id tensors removed from each row's candidates
    (never the target itself). Returns a LongTensor [B] on the device of ``scores``.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, N+1], got shape {list(scores.shape)}")
    batch, num_columns = scores.shape
    targets = targets.to(scores.device).long()
    _check_targets(targets, batch, num_columns - 1)
    if exclude is not None and len(exclude) != batch:
        raise ValueError(f"exclude must hold one tensor per row ({batch}), got {len(exclude)}")

    chunk = max(1, _CHUNK_ELEMENTS // max(1, num_columns))
    ranks = []
    for start in range(0, batch, chunk):
        stop = min(batch, start + chunk)
        rows = _nan_to_neg_inf(scores[start:stop])
        rows_targets = targets[start:stop]
        target_scores = rows.gather(1, rows_targets[:, None])
        candidates = _candidate_mask(
            rows_targets, num_columns, None if exclude is None else exclude[start:stop]
        )
        ranks.append(((rows >= target_scores) & candidates).sum(dim=1))
    if not ranks:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    return torch.cat(ranks)


def sampled_ranks(
    scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Pessimistic 0-based rank of each target among itself and its K sampled negatives.

    ``negatives`` is [B, K]; entries equal to 0 (padding) or to the target are not
    competitors. Returns a LongTensor [B] on the device of ``scores``.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, N+1], got shape {list(scores.shape)}")
    batch, num_columns = scores.shape
    targets = targets.to(scores.device).long()
    negatives = negatives.to(scores.device).long()
    _check_targets(targets, batch, num_columns - 1)
    if negatives.dim() != 2 or negatives.shape[0] != batch:
        raise ValueError(f"negatives must be [{batch}, K], got shape {list(negatives.shape)}")
    if negatives.shape[1] == 0 and batch:
        # Without competitors every target ranks first: metrics of 1.0 that mean nothing.
        raise ValueError("sampled ranking needs at least one negative per example (K = 0)")
    scores = _nan_to_neg_inf(scores)
    target_scores = scores.gather(1, targets[:, None])
    negative_scores = scores.gather(1, negatives)
    competitors = (negatives != 0) & (negatives != targets[:, None])
    return ((negative_scores >= target_scores) & competitors).sum(dim=1)


def metrics_from_ranks(ranks: np.ndarray | torch.Tensor, ks: Iterable[int]) -> dict[str, float]:
    """NDCG@k, HR@k and MRR@k averaged over examples, from 0-based ranks.

    A rank r counts when r < k: HR adds 1, NDCG adds 1 / log2(r + 2), MRR adds 1 / (r + 1).
    Keys are ordered by metric (NDCG, HR, MRR), then by increasing k.
    """
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    ranks = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if ranks.size == 0:
        raise ValueError("cannot compute metrics from zero examples")
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return {key: float(values.mean()) for key, values in per_example_gains(ranks, ks).items()}


def per_example_gains(ranks: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """Every metric's value for each example (the mean of which is the metric)."""
    result: dict[str, np.ndarray] = {}
    for name, gain in (
        ("NDCG", 1.0 / np.log2(ranks + 2.0)),
        ("HR", np.ones_like(ranks)),
        ("MRR", 1.0 / (ranks + 1.0)),
    ):
        for k in ks:
            result[f"{name}@{k}"] = np.where(ranks < k, gain, 0.0)
    return result


def standard_errors(ranks: np.ndarray | torch.Tensor, ks: Iterable[int]) -> dict[str, float]:
    """Standard error of each metric's mean over examples (how much of a gap is noise)."""
    if isinstance(ranks, torch.Tensor):
        ranks = ranks.detach().cpu().numpy()
    ranks = np.asarray(ranks, dtype=np.float64).reshape(-1)
    ks = sorted(set(int(k) for k in ks))
    n = max(len(ranks), 2)
    return {
        key: float(values.std(ddof=1) / np.sqrt(n)) if len(values) > 1 else 0.0
        for key, values in per_example_gains(ranks, ks).items()
    }
