"""Many ``Generator.choice(n, k, replace=False)`` calls in one compiled loop, draw for draw.

Preparing a log draws each user's evaluation negatives with one ``rng.choice`` call; at
10M interactions (194k users) the negatives took 3.8 s of an 8.5 s preparation, mostly
Python and NumPy call overhead (1.7 s of it the calls alone). The prepared data's
fingerprint covers the negatives, so a faster sampler must draw exactly what
``rng.choice`` draws and leave the generator exactly where it would be. That is what this
module does, for NumPy's default bit generator (PCG64):

- ``choice(n, k, replace=False)`` with ``n <= 10000`` or ``k <= n // 50`` runs Floyd's
  algorithm, one bounded integer for each of ``j = n - k .. n - 1``, then shuffles the k
  picks (Fisher-Yates, a bounded integer for each ``i = k - 1 .. 1``);
- a bounded integer in ``[0, r]`` with ``0 < r < 2**32 - 1`` is Lemire's multiply-and-reject
  on 32-bit words (``r == 0`` draws nothing);
- 32-bit words come from PCG64's 64-bit outputs, low half first; the high half waits in
  the bit generator's ``has_uint32``/``uinteger`` buffer.

The compiled loop reads words taken in bulk with ``random_raw`` and returns how many it
used; the generator is then set to the state those words leave behind. Any user outside
Floyd's branch (the tail-shuffle branch, or fewer than k unseen items) is handed back to
NumPy itself, so rare cases stay exact without being reimplemented. Tests compare every
output and the generator's final state with NumPy's own calls.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np

_DONE, _NEED_WORDS = 0, 1
_BATCH_USERS = 1 << 14  # users per batch of words: about 14 MB of words at k = 100
# NumPy's choice switches to a tail shuffle above this population when k > n // 50.
_TAIL_SHUFFLE_POPULATION, _TAIL_SHUFFLE_CUTOFF = 10000, 50
_MAX_POPULATION = 2**32 - 1  # Lemire on 32-bit words: r < 2**32 - 1


def floyd_branch(population: np.ndarray, k: int) -> np.ndarray:
    """Where ``choice(population, k, replace=False)`` takes Floyd's branch (no tail shuffle)."""
    population = np.asarray(population, dtype=np.int64)
    tail = (population > _TAIL_SHUFFLE_POPULATION) & (k > population // _TAIL_SHUFFLE_CUTOFF)
    return (population >= k) & ~tail & (population < _MAX_POPULATION)


@numba.njit(cache=True, nogil=True)
def _bounded(words, at, bound):  # pragma: no cover - compiled
    """(Lemire's integer in [0, bound] from words[at:], the next word), or (-1, at) when
    the words run out. A bound of 0 draws no word."""
    if bound == 0:
        return np.int64(0), at
    excl = np.uint64(bound) + np.uint64(1)
    low = np.uint64(0xFFFFFFFF)
    while at < words.shape[0]:
        m = np.uint64(words[at]) * excl
        at += 1
        leftover = m & low
        # Accept unless leftover < (2**32 - excl) % excl (below excl: computed only then).
        if leftover >= excl or leftover >= (low - np.uint64(bound)) % excl:
            return np.int64(m >> np.uint64(32)), at
    return np.int64(-1), at


@numba.njit(cache=True, nogil=True)
def _choices(words, start, upto, population, k, out, seen_at, tick):  # pragma: no cover - compiled
    """Floyd + shuffle for users ``start..upto-1`` (each in Floyd's branch, or empty).

    Returns (status, first user not drawn, words used). ``_NEED_WORDS``: the words ran
    out within that user, whose draws are then not counted as used.
    """
    pos = 0
    for user in range(start, upto):
        n = population[user]
        if n == 0:
            continue  # nothing to draw: no call is made
        at = pos
        tick[0] += 1  # marks this attempt's picks (a retried user must not see its own)
        mark = tick[0]
        for t in range(k):  # Floyd: one integer in [0, j] for j = n - k .. n - 1
            j = n - k + t
            val, at = _bounded(words, at, j)
            if val < 0:
                return _NEED_WORDS, user, pos
            if seen_at[val] == mark:  # a repeat takes j itself (earlier picks are below j)
                val = j
            seen_at[val] = mark
            out[user, t] = val
        for i in range(k - 1, 0, -1):  # Fisher-Yates over the picks
            other, at = _bounded(words, at, i)
            if other < 0:
                return _NEED_WORDS, user, pos
            out[user, i], out[user, other] = out[user, other], out[user, i]
        pos = at
    return _DONE, upto, pos


def choices_without_replacement(
    rng: np.random.Generator,
    population: np.ndarray,
    k: int,
    hand_back: Callable[[int], np.ndarray | None],
) -> np.ndarray:
    """Per user u, ``rng.choice(population[u], k, replace=False)`` drawn in order, as rows.

    A user with ``population[u] == 0`` draws nothing (row of 0). For a user that NumPy's
    choice would not run through Floyd's branch (including ``population[u] < k``),
    ``hand_back(u)`` is called at its turn and draws from ``rng`` itself; what it returns
    (if not None) is the user's row. ``rng`` ends where the same calls would leave it.
    Generators other than PCG64 get the plain per-user calls.
    """
    population = np.asarray(population, dtype=np.int64)
    users = len(population)
    out = np.zeros((users, k), dtype=np.int64)
    floyd = floyd_branch(population, k)
    if k == 0:
        return out
    handed = np.flatnonzero(~floyd & (population > 0))  # in order: NumPy draws these
    pcg64 = isinstance(rng.bit_generator, np.random.PCG64)
    seen_at = np.zeros(int(population.max(initial=0)) + 1, dtype=np.int64)
    tick = np.zeros(1, dtype=np.int64)
    user, per_user = 0, 2 * k + 8  # words per user: 2k - 1, and the odd rejection
    while user < users:
        following = int(np.searchsorted(handed, user))  # the next user NumPy draws
        upto = int(handed[following]) if following < len(handed) else users
        if upto == user:
            row = hand_back(user)
            if row is not None:
                out[user] = row
            user += 1
        elif not pcg64:
            for one in range(user, upto):
                if population[one]:
                    out[one] = rng.choice(int(population[one]), k, replace=False)
            user = upto
        else:
            bits = rng.bit_generator
            user = _floyd_users(bits, user, upto, per_user, population, k, out, (seen_at, tick))
            if user < upto:  # the words ran out within one user: take more next time
                per_user *= 2
    return out


def _floyd_users(
    bits: np.random.PCG64, user: int, upto: int, per_user: int, population: np.ndarray,
    k: int, out: np.ndarray, marks: tuple[np.ndarray, np.ndarray],
) -> int:  # fmt: skip
    """Draw users ``user..upto-1`` (all in Floyd's branch) from words taken in bulk;
    returns the first user not drawn."""
    while user < upto:
        state = bits.state
        buffered = [state["uinteger"]] if state["has_uint32"] else []
        raw = bits.random_raw(max(1, min(upto - user, _BATCH_USERS) * per_user // 2))
        words = np.empty(len(buffered) + 2 * len(raw), dtype=np.uint32)
        words[: len(buffered)] = buffered
        words[len(buffered) :: 2] = raw & 0xFFFFFFFF  # PCG64: the low half first
        words[len(buffered) + 1 :: 2] = raw >> 32
        status, reached, used = _choices(words, user, upto, population, k, out, *marks)
        _resume_after(bits, state, len(buffered), used, words)
        if status == _NEED_WORDS and reached == user:
            return user
        user = reached
    return user


def _resume_after(
    bits: np.random.PCG64, state: dict, buffered: int, used: int, words: np.ndarray
) -> None:
    """Set ``bits`` to ``state`` moved on by ``used`` 32-bit words of ``words``."""
    bits.state = state
    if used < buffered or used == 0:
        return  # nothing consumed: the buffered half stays
    from_raw = used - buffered
    bits.advance((from_raw + 1) // 2)  # also clears the 32-bit buffer
    if from_raw % 2:  # a 64-bit output half used: its high half waits in the buffer
        moved = bits.state
        moved["has_uint32"], moved["uinteger"] = 1, int(words[used])
        bits.state = moved


@numba.njit(cache=True, nogil=True)
def _distinct_sorted(items, offsets, seen, counts):  # pragma: no cover - compiled
    """Each user's distinct items in increasing order, packed from the user's start."""
    for user in range(offsets.shape[0] - 1):
        lo, hi = offsets[user], offsets[user + 1]
        mine = np.sort(items[lo:hi])
        n = 0
        for t in range(mine.shape[0]):
            if n == 0 or mine[t] != seen[lo + n - 1]:
                seen[lo + n] = mine[t]
                n += 1
        counts[user] = n


def distinct_sorted(items: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user (rows ``offsets[u]:offsets[u+1]`` of ``items``), its distinct items sorted:
    returns them flat and the users' starts in that flat array."""
    items = np.ascontiguousarray(items, dtype=np.int64)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    packed = np.empty_like(items)
    counts = np.zeros(len(offsets) - 1, dtype=np.int64)
    _distinct_sorted(items, offsets, packed, counts)
    starts = np.zeros(len(offsets), dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    owner_offsets = offsets[:-1]
    keep = np.arange(len(items)) - np.repeat(owner_offsets, np.diff(offsets))
    return packed[keep < np.repeat(counts, np.diff(offsets))], starts


@numba.njit(cache=True, nogil=True)
def _unseen_items(seen, starts, positions, rows, out):  # pragma: no cover - compiled
    for row in rows:
        lo, hi = starts[row], starts[row + 1]
        for t in range(positions.shape[1]):
            p = positions[row, t]
            # The p-th unseen item (0-based, items 1..N): p + 1 plus the seen items at or
            # below it; seen[i] - 1 - (i - lo) unseen items lie below seen item i.
            a, b = lo, hi
            while a < b:
                mid = (a + b) // 2
                if seen[mid] - 1 - (mid - lo) <= p:
                    a = mid + 1
                else:
                    b = mid
            out[row, t] = p + 1 + (a - lo)


def unseen_items(
    seen: np.ndarray, starts: np.ndarray, positions: np.ndarray, rows: np.ndarray, out: np.ndarray
) -> None:
    """``out[row, t]`` = the ``positions[row, t]``-th item of 1..N the user of ``row`` has not
    seen (``seen[starts[row]:starts[row + 1]]``, sorted and distinct), for each of ``rows``."""
    _unseen_items(seen, starts, positions, np.asarray(rows, dtype=np.int64), out)
