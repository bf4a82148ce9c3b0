"""build_model turns a ModelConfig into the right, correctly sized model."""

import pytest

from adarec.config import ModelConfig
from adarec.errors import UserError
from adarec.models.bert4rec import BERT4Rec
from adarec.models.factory import build_model
from adarec.models.nextitnet import NextItNet
from adarec.models.pop import Popularity
from adarec.models.sasrec import SASRec


def test_builds_each_model_from_its_fields():
    nextitnet = build_model(
        ModelConfig(
            name="nextitnet",
            hidden_size=12,
            num_blocks=6,
            dilations=[1, 2, 4],
            kernel_size=2,
            residual_scale=False,
            distill_every=3,
        ),
        num_items=40,
        max_len=9,
    )
    assert isinstance(nextitnet, NextItNet)
    assert (nextitnet.num_items, nextitnet.max_len, nextitnet.hidden_size) == (40, 9, 12)
    assert len(nextitnet.blocks) == 6 and nextitnet.distill_every == 3
    assert [b.conv1.conv.dilation[0] for b in nextitnet.blocks] == [1, 2, 4, 1, 2, 4]
    assert nextitnet.blocks[0].conv1.conv.kernel_size == (2,)
    assert nextitnet.blocks[0].scale is None

    sasrec = build_model(
        ModelConfig(name="sasrec", hidden_size=8, num_blocks=3, num_heads=4, inner_size=20), 40, 9
    )
    assert isinstance(sasrec, SASRec) and len(sasrec.blocks) == 3
    assert sasrec.blocks[0].attention.num_heads == 4
    assert sasrec.blocks[0].feed_forward[0].out_features == 20
    assert sasrec.position_embedding.embedding.num_embeddings == 9

    bert = build_model(
        ModelConfig(name="bert4rec", hidden_size=8, num_heads=2, mask_prob=0.3), 40, 9
    )
    assert isinstance(bert, BERT4Rec) and bert.mask_prob == 0.3 and not bert.causal

    assert isinstance(build_model(ModelConfig(name="pop"), 40, 9), Popularity)


def test_rejects_bad_settings():
    with pytest.raises(UserError, match="unknown model"):
        build_model(ModelConfig(name="gru4rec"), 10, 5)
    with pytest.raises(UserError, match="distill_every"):
        build_model(ModelConfig(name="sasrec", num_blocks=2, distill_every=3), 10, 5)
