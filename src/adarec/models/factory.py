"""Build a teacher (or a hand-designed small student) from its ModelConfig."""

from __future__ import annotations

from adarec.config import ModelConfig
from adarec.errors import UserError
from adarec.models.base import SequentialRecommender
from adarec.models.bert4rec import BERT4Rec
from adarec.models.nextitnet import NextItNet
from adarec.models.pop import Popularity
from adarec.models.sasrec import SASRec


def build_model(cfg: ModelConfig, num_items: int, max_len: int) -> SequentialRecommender:
    """An untrained model named by ``cfg.name`` (nextitnet | sasrec | bert4rec | pop)."""
    if cfg.name == "pop":
        return Popularity(num_items)
    if not 1 <= cfg.distill_every <= cfg.num_blocks:
        raise UserError(
            f"config key 'model.distill_every' must be between 1 and model.num_blocks "
            f"({cfg.num_blocks}); got {cfg.distill_every}"
        )
    if cfg.name == "nextitnet":
        return NextItNet(
            num_items,
            max_len,
            hidden_size=cfg.hidden_size,
            num_blocks=cfg.num_blocks,
            dilations=list(cfg.dilations),
            kernel_size=cfg.kernel_size,
            residual_scale=cfg.residual_scale,
            dropout=cfg.dropout,
            distill_every=cfg.distill_every,
        )
    transformer = {
        "hidden_size": cfg.hidden_size,
        "num_blocks": cfg.num_blocks,
        "num_heads": cfg.num_heads,
        "inner_size": cfg.inner_size,
        "dropout": cfg.dropout,
        "distill_every": cfg.distill_every,
    }
    if cfg.name == "sasrec":
        return SASRec(num_items, max_len, **transformer)
    if cfg.name == "bert4rec":
        return BERT4Rec(num_items, max_len, mask_prob=cfg.mask_prob, **transformer)
    raise UserError(f"unknown model {cfg.name!r}; choose nextitnet, sasrec, bert4rec or pop")
