"""BERT4Rec (Sun et al., 2019): masked-item pretraining, then causal fine-tuning."""

from __future__ import annotations

from typing import Any, Self

import torch

from adarec.config import ModelConfig
from adarec.models.layers import padding_mask
from adarec.models.transformer import TransformerRecommender


class BERT4Rec(TransformerRecommender):
    """Bidirectional transformer with a [MASK] item (id ``num_items + 1``) and GELU FFN.

    ``causal`` switches the attention: False for masked-item pretraining (bidirectional,
    padding masked), True for the autoregressive fine-tuning that precedes distillation
    (causal and padding masks; the public release forgot the causal mask, so each position
    saw its own label). The input vocabulary has num_items + 2 rows, the logits still have
    num_items + 1 columns ([MASK] is never predicted).
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        hidden_size: int = 64,
        num_blocks: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.2,
        distill_every: int = 1,
        mask_prob: float = 0.4,
        causal: bool = False,
    ):
        super().__init__(
            num_items,
            max_len,
            hidden_size,
            num_blocks,
            num_heads,
            inner_size,
            dropout,
            distill_every,
            activation="gelu",
            vocab_size=num_items + 2,
        )
        self.mask_token = num_items + 1
        self.mask_prob = mask_prob
        self.causal = causal

    @classmethod
    def config_arguments(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {**super().config_arguments(cfg), "mask_prob": cfg.mask_prob}

    def to_spec(self) -> dict[str, Any]:
        # Fine-tuned (and distilled) BERT4Rec attends causally; the spec says so.
        return {**super().to_spec(), "causal": self.causal}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Self:
        model = super().from_spec(spec)
        model.causal = spec.get("causal", model.causal)
        return model

    def attends_causally(self) -> bool:
        return self.causal

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor:
        """Last-position scores [B, num_items + 1].

        Causal: the last position, as in SASRec. Bidirectional: the oldest item is dropped
        and [MASK] appended, and the scores are those of the [MASK] position.
        """
        if self.causal:
            return super().full_sort_predict(items)
        mask = torch.full_like(items[:, :1], self.mask_token)
        shifted = torch.cat([items[:, 1:], mask], dim=1)
        return self.logits(self.forward(shifted).output[:, -1, :])


def mask_items(
    items: torch.Tensor,
    mask_prob: float,
    mask_token: int,
    num_items: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-item inputs and labels for BERT4Rec pretraining.

    Each real item is chosen with probability ``mask_prob``; a non-empty row with nothing
    chosen gets its most recent item chosen, so every row has a target. Chosen items become
    [MASK] (80%), a random item (10%) or stay unchanged (10%). ``labels`` hold the original
    item at chosen positions and 0 elsewhere. Padding is never chosen. The random draws come
    from ``generator`` (on its own device), so the same seed gives the same masks.
    """
    real = padding_mask(items)

    def uniform() -> torch.Tensor:
        draws = torch.rand(items.shape, generator=generator, device=generator.device)
        return draws.to(items.device)

    chosen = (uniform() < mask_prob) & real
    # Left padding puts the most recent item last; force it where a row chose nothing.
    unmasked_rows = ~chosen.any(dim=1)
    chosen[:, -1] |= unmasked_rows & real[:, -1]
    random_items = torch.randint(
        1, num_items + 1, items.shape, generator=generator, device=generator.device
    ).to(items.device)
    rule = uniform()
    inputs = torch.where(chosen & (rule < 0.8), torch.full_like(items, mask_token), items)
    inputs = torch.where(chosen & (rule >= 0.8) & (rule < 0.9), random_items, inputs)
    labels = torch.where(chosen, items, torch.zeros_like(items))
    return inputs, labels
