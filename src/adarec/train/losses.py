"""Training objectives of the teachers: next-item and masked-item cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_item_loss(item_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Full-softmax cross-entropy at every position whose target is a real item.

    ``item_logits`` [B, L, N]: scores over the real items (``model.item_logits``: column j
    is item j + 1, no padding column); ``targets`` [B, L] (0: none).
    """
    flat_logits = item_logits.reshape(-1, item_logits.size(-1))
    flat_targets = targets.reshape(-1) - 1  # padding becomes -1 and is ignored
    return F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=-1)


def target_mask(targets: torch.Tensor) -> torch.Tensor:
    """Positions that have a real target (the ones every loss averages over)."""
    return targets > 0
