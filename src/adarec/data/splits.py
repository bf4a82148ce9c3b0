"""Leave-one-out splits: training windows, validation and test inputs, training counts.

For a user sequence ``s``: training uses ``s[:-2]``; validation predicts ``s[-2]`` from
``s[:-2]``; test predicts ``s[-1]`` from ``s[:-1]`` (validation item included). The last
two items never appear in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from adarec.data.preprocess import PreparedData, Sequences

HELD_OUT = 2  # validation and test targets at the end of every sequence


def left_pad(sequences: Sequence[np.ndarray], length: int) -> np.ndarray:
    """[len(sequences), length] int64: the last ``length`` items of each, left-padded with 0."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-length:]
        if len(tail):
            out[row, length - len(tail) :] = tail
    return out


def training_part(seq: np.ndarray) -> np.ndarray:
    """The items a model may train on: everything but the validation and test targets."""
    return seq[:-HELD_OUT]


def cut_windows(train: np.ndarray, max_len: int, min_window: int) -> list[np.ndarray]:
    """Chunks of at most ``max_len + 1`` items cut from the end, overlapping by one item.

    A chunk of n items trains n - 1 targets (all but its first item), so consecutive chunks
    sharing one item predict every training target exactly once. The oldest chunk is
    dropped when it is shorter than ``min_window``.
    """
    windows = []
    end = len(train)
    while end >= 2:
        start = max(0, end - max_len - 1)
        if end - start >= min_window:
            windows.append(train[start:end])
        end = start + 1
    return windows


def train_windows(
    data: PreparedData, max_len: int, mode: str = "windows", min_window: int = 2
) -> np.ndarray:
    """[W, max_len + 1] int64 training windows, left-padded with 0.

    Model input is ``w[:, :-1]`` and targets are ``w[:, 1:]`` (0 = padding, ignored).
    ``windows`` cuts every training part into overlapping chunks (the paper's way);
    ``recent`` keeps only the last ``max_len + 1`` items of each user.
    """
    if mode not in ("windows", "recent"):
        raise ValueError(f"unknown window mode {mode!r}")
    windows: list[np.ndarray] = []
    for seq in data.sequences:
        train = training_part(seq)
        if mode == "windows":
            windows.extend(cut_windows(train, max_len, min_window))
        elif len(recent := train[-(max_len + 1) :]) >= max(min_window, 2):
            windows.append(recent)  # a single item has no target
    return left_pad(windows, max_len + 1)


class PaddedInputs:
    """[U, max_len] int64 model inputs: each history's last ``max_len`` items, left-padded
    with 0, built for the rows asked for (``inputs[a:b]``) rather than held for all users."""

    def __init__(self, histories: Sequences, max_len: int) -> None:
        self.histories, self.max_len = histories, max_len

    def __len__(self) -> int:
        return len(self.histories)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.max_len

    def __getitem__(self, index: int | slice) -> np.ndarray:
        rows = range(len(self))[index]
        if isinstance(rows, int):
            return self[rows : rows + 1][0]
        h = self.histories
        ends = h.ends[rows.start : rows.stop : rows.step]
        first = np.maximum(h.offsets[rows.start : rows.stop : rows.step], ends - self.max_len)
        at = ends[:, None] - self.max_len + np.arange(self.max_len)
        inside = at >= first[:, None]
        out = np.zeros((len(ends), self.max_len), dtype=np.int64)
        out[inside] = h.items[at[inside]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


@dataclass
class EvalSplit:
    """One leave-one-out evaluation set: one row per user."""

    inputs: PaddedInputs  # [U, max_len] int64, left-padded: the last max_len history items
    targets: np.ndarray  # [U] int64
    negatives: np.ndarray  # [U, K] int64 sampled negatives (0 only if none exist)
    histories: Sequences  # everything before the target (views), for excluding seen items
    users: np.ndarray  # [U] int64 indices into data.sequences


def eval_split(data: PreparedData, split: str, max_len: int) -> EvalSplit:
    """``valid`` predicts ``seq[-2]`` from ``seq[:-2]``; ``test`` predicts ``seq[-1]`` from
    ``seq[:-1]``, which includes the validation item."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    position = -2 if split == "valid" else -1
    items, offsets = data.columns()
    if len(offsets) > 1 and np.diff(offsets).min() < -position:
        raise ValueError(f"every sequence needs at least {-position} items for the {split} split")
    histories = Sequences(items, offsets, offsets[1:] + position)  # views, no copy
    return EvalSplit(
        inputs=PaddedInputs(histories, max_len),
        targets=np.asarray(items[offsets[1:] + position], dtype=np.int64),
        negatives=data.negatives,
        histories=histories,
        users=np.arange(data.num_users, dtype=np.int64),
    )


def item_counts(data: PreparedData) -> np.ndarray:
    """[num_items + 1] interaction counts over the training parts only (index 0 stays 0)."""
    items, offsets = data.columns()
    counts = np.bincount(items, minlength=data.num_items + 1)
    for back in range(1, HELD_OUT + 1):  # less each user's held-out last items
        last = offsets[1:] - back
        last = last[last >= offsets[:-1]]  # a sequence this short has fewer
        counts -= np.bincount(items[last], minlength=data.num_items + 1)
    return counts


class TrainWindows(Dataset):
    """Rows of a ``train_windows`` array as LongTensors [max_len + 1].

    ``shard``: (rank, world) when the windows are that rank's shard of the users only.
    """

    def __init__(self, windows: np.ndarray, shard: tuple[int, int] | None = None) -> None:
        self.windows = torch.as_tensor(windows, dtype=torch.long)
        self.shard = shard

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.windows[index]
