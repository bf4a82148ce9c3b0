"""The self-attention encoder that SASRec and BERT4Rec share."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adarec.config import ModelConfig
from adarec.models.base import SeqOutput, Teacher
from adarec.models.layers import (
    PositionEmbedding,
    TransformerBlock,
    attention_mask,
    init_weights,
    padding_mask,
)


class TransformerRecommender(Teacher):
    """Item + learned position embedding, LayerNorm, dropout, post-LN transformer blocks.

    Subclasses say whether attention is causal (``attends_causally``). Padding positions are
    hidden from every query and zeroed after the embedding and after every block.
    ``hidden_states`` are the outputs of every ``distill_every``-th block.
    Initialisation: normal(0, 0.02) for embeddings and linear layers, zero biases.
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        hidden_size: int,
        num_blocks: int,
        num_heads: int,
        inner_size: int,
        dropout: float,
        distill_every: int,
        activation: str,
        vocab_size: int,
    ):
        super().__init__()
        if distill_every < 1:
            raise ValueError(f"distill_every must be positive, got {distill_every}")
        self.num_items, self.max_len, self.hidden_size = num_items, max_len, hidden_size
        self.distill_every = distill_every
        self.item_embedding = nn.Embedding(vocab_size, hidden_size, padding_idx=0)
        self.position_embedding = PositionEmbedding(max_len, hidden_size)
        self.embedding_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, inner_size, dropout, activation)
            for _ in range(num_blocks)
        )
        self.output_layer = nn.Linear(hidden_size, num_items + 1)
        self.apply(init_weights)

    @classmethod
    def config_arguments(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {
            **super().config_arguments(cfg),
            "num_heads": cfg.num_heads,
            "inner_size": cfg.inner_size,
        }

    def attends_causally(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, items: torch.Tensor) -> SeqOutput:
        real = padding_mask(items).unsqueeze(-1).float()
        allowed = attention_mask(items, self.attends_causally())
        x = self.embedding_norm(self.item_embedding(items) + self.position_embedding(items))
        x = self.dropout(x) * real
        embedding = x
        outputs = []
        for block in self.blocks:
            x = block(x, allowed, real)
            outputs.append(x)
        hidden = outputs[self.distill_every - 1 :: self.distill_every]
        return SeqOutput(embedding=embedding, hidden_states=hidden, output=x)

    def step_state(self) -> list[torch.Tensor]:
        """The key/value caches of ``step`` before the first item: [0, H] per block, twice."""
        weight = self.item_embedding.weight
        return [weight.new_zeros(0, self.hidden_size) for _ in range(2 * len(self.blocks))]

    def step(
        self, item: int, position: int, caches: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward``'s output [H] at a new last item (internal id ``item`` at
        ``position`` < max_len, counted from the oldest item) from the key/value caches of
        the earlier positions (keys then values per block, [position, H] each); the grown
        caches. Causal attention only (``attends_causally``); eval mode."""
        x = self.embedding_norm(
            self.item_embedding.weight[item] + self.position_embedding.embedding.weight[position]
        )
        later: list[torch.Tensor] = []
        for b, block in enumerate(self.blocks):
            x, keys, values = block.step(x, caches[2 * b], caches[2 * b + 1])
            later += [keys, values]
        return x, later
