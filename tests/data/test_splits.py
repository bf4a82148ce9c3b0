from collections import Counter

import numpy as np
import pytest
import torch

from adarec.data.splits import (
    TrainWindows,
    cut_windows,
    eval_split,
    item_counts,
    left_pad,
    train_windows,
)
from tests.data.helpers import prepared


def test_left_pad_keeps_the_most_recent_items():
    out = left_pad([np.array([1, 2, 3, 4, 5]), np.array([7]), np.array([], dtype=np.int64)], 3)
    assert out.tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0]]
    assert out.dtype == np.int64


def test_valid_and_test_targets_and_inputs():
    data = prepared([[1, 2, 3, 4, 5, 6], [7, 8, 9]], num_negatives=2)
    valid = eval_split(data, "valid", max_len=3)
    assert valid.targets.tolist() == [5, 8]
    assert valid.inputs[:].tolist() == [[2, 3, 4], [0, 0, 7]]
    assert [h.tolist() for h in valid.histories] == [[1, 2, 3, 4], [7]]
    test = eval_split(data, "test", max_len=3)
    assert test.targets.tolist() == [6, 9]
    # The test input includes the validation item (the public release skipped it).
    assert test.inputs[:].tolist() == [[3, 4, 5], [0, 7, 8]]
    assert [h.tolist() for h in test.histories] == [[1, 2, 3, 4, 5], [7, 8]]
    assert test.users.tolist() == [0, 1]
    assert test.negatives.shape == (2, 2)
    with pytest.raises(ValueError, match="split"):
        eval_split(data, "train", max_len=3)


def test_windows_are_cut_from_the_end_and_overlap_by_one():
    train = np.arange(1, 13)
    windows = cut_windows(train, max_len=4, min_window=2)
    assert [w.tolist() for w in windows] == [[8, 9, 10, 11, 12], [4, 5, 6, 7, 8], [1, 2, 3, 4]]
    assert [w.tolist() for w in cut_windows(train, max_len=4, min_window=5)] == [
        [8, 9, 10, 11, 12],
        [4, 5, 6, 7, 8],
    ]


def test_training_windows_hold_no_held_out_item_and_cover_each_target_once():
    # Disjoint item ranges per user, so every item tells whose it is.
    lengths = [3, 4, 7, 12, 25]
    starts = np.cumsum([1] + lengths[:-1])
    sequences = [list(range(s, s + n)) for s, n in zip(starts, lengths, strict=True)]
    data = prepared(sequences)
    held_out = {item for seq in sequences for item in seq[-2:]}
    for max_len in (2, 3, 5, 50):
        windows = train_windows(data, max_len=max_len)
        assert windows.shape[1] == max_len + 1
        assert not held_out & set(windows.ravel().tolist())
        inputs, targets = windows[:, :-1], windows[:, 1:]
        predicted = Counter(targets[inputs > 0].tolist())
        expected = Counter(item for seq in sequences for item in seq[1:-2])
        assert predicted == expected
        # Left padding: once a row starts, it has no holes.
        for row in windows:
            nonzero = np.flatnonzero(row)
            assert nonzero.size == 0 or np.all(row[nonzero[0] :] > 0)


def test_recent_mode_keeps_the_last_window():
    data = prepared([list(range(1, 11)), [11, 12, 13]])
    windows = train_windows(data, max_len=3, mode="recent")
    assert windows.tolist() == [[5, 6, 7, 8]]
    windows = train_windows(data, max_len=3, mode="recent", min_window=5)
    assert windows.shape == (0, 4)


def test_min_window_drops_short_chunks():
    data = prepared([list(range(1, 9))])  # training part: 1..6
    assert train_windows(data, max_len=3).tolist() == [[3, 4, 5, 6], [0, 1, 2, 3]]
    assert train_windows(data, max_len=3, min_window=4).tolist() == [[3, 4, 5, 6]]


def test_item_counts_use_training_items_only():
    data = prepared([[1, 2, 1, 3, 4], [2, 2, 5]])
    assert item_counts(data).tolist() == [0, 2, 2, 0, 0, 0]
    # Sequences too short to train on count nothing, however short.
    data = prepared([[3], [4, 4], [1, 3, 5], [2, 5, 1, 1]])
    assert item_counts(data).tolist() == [0, 1, 1, 0, 0, 1]


def test_train_windows_dataset():
    windows = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int64)
    dataset = TrainWindows(windows)
    assert len(dataset) == 2
    row = dataset[1]
    assert row.dtype == torch.long
    assert row.tolist() == [3, 4, 5]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch.shape == (2, 3)


def test_split_inputs_are_built_per_rows_from_views_of_the_columns():
    sequences = [list(range(1, 9)), [11, 12, 13], [21, 22, 23, 24, 25]]
    data = prepared(sequences)
    for split, cut in (("valid", -2), ("test", -1)):
        s = eval_split(data, split, max_len=4)
        whole = left_pad([np.array(seq[:cut]) for seq in sequences], 4)
        assert np.asarray(s.inputs).tolist() == whole.tolist()
        assert s.inputs[1:3].tolist() == whole[1:3].tolist() and s.inputs.shape == (3, 4)
        assert s.inputs[2].tolist() == whole[2].tolist()
        # Histories are views of one column (for cached data: the memory-mapped file).
        assert all(np.shares_memory(h, s.histories.items) for h in s.histories if len(h))
    with pytest.raises(ValueError, match="at least 2 items"):
        eval_split(prepared([[1, 2, 3], [4]]), "valid", max_len=4)
