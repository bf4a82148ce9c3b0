"""What every sequential recommender in adarec exposes (teachers and students alike)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class SeqOutput:
    """A forward pass: embedding output, the layers used for distillation, final states."""

    embedding: torch.Tensor  # [B, L, H]
    hidden_states: list[torch.Tensor] = field(default_factory=list)  # each [B, L, H]
    output: torch.Tensor | None = None  # [B, L, H]


class SequentialRecommender(nn.Module):
    """Base class: subclasses define ``item_embedding``, ``output_layer`` and ``forward``.

    ``item_embedding`` and ``output_layer`` are the parts that scale with the catalogue;
    everything else is the model's "body" (see ``count_parameters``).
    """

    num_items: int
    max_len: int

    def forward(self, items: torch.Tensor) -> SeqOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """Scores over [padding] + items for every position: [..., num_items + 1]."""
        return self.output_layer(output)

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor:
        """Scores at the last position only: [B, num_items + 1] (column 0 is padding)."""
        return self.logits(self.forward(items).output[:, -1, :])


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total parameters, and the body: everything outside item embedding and output layer."""
    total = sum(p.numel() for p in model.parameters())
    catalogue = 0
    for name in ("item_embedding", "output_layer"):
        module = getattr(model, name, None)
        if module is not None:
            catalogue += sum(p.numel() for p in module.parameters())
    return {"total": total, "body": total - catalogue}
