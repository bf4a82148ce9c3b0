"""SASRec (Kang & McAuley, 2018): causal self-attention over the item history."""

from __future__ import annotations

from adarec.models.transformer import TransformerRecommender


class SASRec(TransformerRecommender):
    """Learned positions, causal attention with padding masked, post-LN blocks, ReLU FFN.

    Paper preset: hidden 128, 8 blocks, 4 heads, dropout 0.2, every block distilled.
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
            activation="relu",
            vocab_size=num_items + 1,
        )

    def attends_causally(self) -> bool:
        return True
