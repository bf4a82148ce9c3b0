"""Popularity baseline: every history gets the same scores, the items' training counts."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from adarec.config import ModelConfig
from adarec.models.base import CandidateScores, SeqOutput, Teacher


class Popularity(Teacher):
    """Scores items by how often they occur in the training data; no trainable parameters.

    ``forward`` returns zero-width states ([B, L, 0], no hidden states) and ``logits`` maps
    any such output to the counts, so ``logits(forward(x).output)`` and
    ``full_sort_predict`` behave as for every other model. Column 0 (padding) is -inf.
    """

    def __init__(self, num_items: int, max_len: int = 0):
        super().__init__()
        # max_len: the length of the histories it is served (it reads none of them).
        self.num_items, self.max_len, self.hidden_size = num_items, max_len, 0
        # Scores over [padding] + items: the counts, with padding never ranked.
        scores = torch.zeros(num_items + 1)
        scores[0] = float("-inf")
        self.register_buffer("scores", scores)

    @classmethod
    def config_arguments(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {}  # nothing to configure: the scores come from ``fit``

    def fit(self, counts: np.ndarray | torch.Tensor) -> Popularity:
        """Store ``counts`` [num_items + 1] (index 0 is padding and is ignored)."""
        values = torch.as_tensor(counts, dtype=torch.float32)
        if values.shape != self.scores.shape:
            raise ValueError(
                f"counts must have shape [{self.num_items + 1}], got {list(values.shape)}"
            )
        self.scores[1:] = values[1:].to(self.scores.device)
        return self

    def forward(self, items: torch.Tensor) -> SeqOutput:
        empty = torch.zeros(*items.shape, 0, device=items.device)
        return SeqOutput(embedding=empty, hidden_states=[], output=empty)

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(*output.shape[:-1], -1).clone()

    def item_logits(self, output: torch.Tensor) -> torch.Tensor:
        return self.logits(output)[..., 1:]

    def candidate_scores(
        self, output: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
    ) -> CandidateScores:
        rows = output.shape[:-1]
        return CandidateScores(
            self.scores[targets], self.scores[negatives].expand(*rows, -1).clone()
        )
