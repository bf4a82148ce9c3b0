"""Synthetic interaction logs with a planted sequential pattern.

At each step a user follows the pattern with probability ``FOLLOW_PROB``; otherwise the user
jumps to an item drawn from a Zipf-like popularity distribution. A model that learns the
pattern predicts about ``FOLLOW_PROB`` of the next items; popularity alone few of them.

Patterns (``data.synthetic_pattern``):

- ``successor``: all items form one hidden cycle; the next item is the successor of the
  current one. The current item alone says what comes next, so a cell needs no operation
  at all (the cell's residual path carries the current item to the head).
- ``order``: the next item is the successor of the item ``ORDER_LAG`` (3) steps back, so
  a user interleaves three walks along the cycle. The answer depends on which recent item
  stands exactly three positions back: a causal convolution gives each position its own
  kernel tap, while pools (stacked or not) blend the recent items into one unordered
  summary in which the item three steps back is not told apart from its neighbours.
"""

from __future__ import annotations

import numpy as np

from adarec.data.interactions import Interactions
from adarec.errors import UserError

SYNTHETIC_VERSION = 2  # bump when the generated data changes: it keys the data cache
FOLLOW_PROB = 0.8
ORDER_LAG = 3
ZIPF_EXPONENT = 1.0
START_TIME = 1_000_000_000.0  # seconds; an arbitrary epoch so timestamps look like real ones


PATTERNS = ("successor", "order")


def _cycle_successor(rng: np.random.Generator, num_items: int) -> np.ndarray:
    cycle = rng.permutation(num_items)
    successor = np.empty(num_items, dtype=np.int64)
    successor[cycle] = np.roll(cycle, -1)
    return successor


def make_synthetic(
    num_users: int, num_items: int, length: int, seed: int, pattern: str = "successor"
) -> Interactions:
    """``num_users`` sequences of exactly ``length`` items over ``num_items`` items.

    Deterministic for a seed; rows are grouped by user, timestamps strictly increase per
    user; raw ids are ``u<k>`` and ``i<k>``; there are no ratings.
    """
    if num_users < 1 or num_items < 2 or length < 3:
        raise UserError(
            "synthetic data needs synthetic_users >= 1, synthetic_items >= 2 and "
            f"synthetic_length >= 3; got {num_users}, {num_items}, {length}"
        )
    if pattern not in PATTERNS:
        raise UserError(f"unknown synthetic pattern {pattern!r}; choose one of {PATTERNS}")
    rng = np.random.default_rng(seed)
    successor = _cycle_successor(rng, num_items)
    popularity = 1.0 / np.arange(1, num_items + 1) ** ZIPF_EXPONENT
    popularity = popularity[rng.permutation(num_items)] / popularity.sum()

    follow = rng.random((num_users, length)) < FOLLOW_PROB
    jumps = rng.choice(num_items, size=(num_users, length), p=popularity)
    sequences = np.empty((num_users, length), dtype=np.int64)
    sequences[:, 0] = jumps[:, 0]
    lag = 1 if pattern == "successor" else ORDER_LAG
    sequences[:, :lag] = jumps[:, :lag]
    for t in range(lag, length):
        sequences[:, t] = np.where(follow[:, t], successor[sequences[:, t - lag]], jumps[:, t])

    gaps = rng.integers(1, 3600, size=(num_users, length))
    starts = START_TIME + rng.integers(0, 86_400 * 365, size=(num_users, 1))
    timestamps = (starts + np.cumsum(gaps, axis=1)).astype(np.float64)

    user_names = np.array([f"u{u}" for u in range(num_users)], dtype=object)
    item_names = np.array([f"i{i}" for i in range(num_items)], dtype=object)
    return Interactions(
        users=np.repeat(user_names, length),
        items=item_names[sequences.ravel()],
        timestamps=timestamps.ravel(),
        ratings=None,
    )
