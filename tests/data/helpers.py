"""Small hand-made PreparedData for split and statistics tests."""

import numpy as np

from adarec.data.preprocess import PAD, PreparedData


def prepared(sequences: list[list[int]], num_negatives: int = 0) -> PreparedData:
    num_items = max(max(seq) for seq in sequences)
    return PreparedData(
        name="hand-made",
        item_ids=[PAD] + [f"item{k}" for k in range(1, num_items + 1)],
        user_ids=[f"user{k}" for k in range(len(sequences))],
        sequences=[np.array(seq, dtype=np.int64) for seq in sequences],
        negatives=np.zeros((len(sequences), num_negatives), dtype=np.int64),
    )
