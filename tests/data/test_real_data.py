"""The built-in ml-100k file (installed with recbole 1.2.1), end to end."""

import numpy as np

from adarec.config import DataConfig
from adarec.data.builtin import builtin_path
from adarec.data.preprocess import prepare
from adarec.data.readers import read_atomic
from adarec.data.splits import eval_split, train_windows


def test_ml100k_five_core(tmp_path):
    raw = read_atomic(builtin_path("ml-100k"))
    assert len(raw) == 100_000
    assert len(set(raw.users)) == 943 and len(set(raw.items)) == 1682
    assert np.any(np.diff(raw.timestamps) < 0)  # the file is not sorted

    cfg = DataConfig("ml-100k", rating_threshold=None, min_user_count=5, min_item_count=5)
    data = prepare(cfg, 42, tmp_path)
    assert (data.num_users, data.num_items, data.num_interactions) == (943, 1349, 99_287)
    assert data.negatives.shape == (943, 100)

    # Sequences follow (timestamp, file row) for the first user.
    user = data.user_ids[0]
    rows = np.flatnonzero(raw.users == user)
    kept = set(data.item_ids[1:])
    rows = [
        r for r in rows[np.argsort(raw.timestamps[rows], kind="stable")] if raw.items[r] in kept
    ]
    assert [data.item_ids[i] for i in data.sequences[0]] == [raw.items[r] for r in rows]

    test = eval_split(data, "test", max_len=50)
    windows = train_windows(data, max_len=50)
    trained = (windows[:, :-1] > 0) & (windows[:, 1:] > 0)
    assert trained.sum() == data.num_interactions - 3 * data.num_users
    assert test.inputs.shape == (943, 50)


def test_ml100k_columnar_preparation_equals_the_row_reader(tmp_path):
    from adarec.data.preprocess import build_in_memory

    for options in ({}, {"rating_threshold": 4.0, "kcore": "single"}):
        cfg = DataConfig("ml-100k", **options)
        data = prepare(cfg, 42, tmp_path)
        expected = build_in_memory(read_atomic(builtin_path("ml-100k")), cfg, 42, "ml-100k", print)
        assert data.fingerprint() == expected.fingerprint()
        assert data.filter_log == expected.filter_log
