"""Training objectives of the teachers: next-item and masked-item cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_item_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Full-softmax cross-entropy at every position whose target is a real item.

    ``logits`` [B, L, N+1] (column 0 is padding and is dropped), ``targets`` [B, L] (0: none).
    """
    flat_logits = logits[..., 1:].reshape(-1, logits.size(-1) - 1)
    flat_targets = targets.reshape(-1) - 1  # padding becomes -1 and is ignored
    return F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=-1)


def target_mask(targets: torch.Tensor) -> torch.Tensor:
    """Positions that have a real target (the ones every loss averages over)."""
    return targets > 0
