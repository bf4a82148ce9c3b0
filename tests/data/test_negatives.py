"""The compiled draws must be NumPy's own ``choice`` calls, output and generator state."""

import numpy as np
import pytest

from adarec.data import negatives as draws
from adarec.data.negatives import choices_without_replacement, floyd_branch


def numpy_calls(rng: np.random.Generator, population: np.ndarray, k: int) -> np.ndarray:
    """What the per-user loop draws: choice where k fit, a permutation where they do not."""
    out = np.zeros((len(population), k), dtype=np.int64)
    for user, n in enumerate(population):
        if n and k:
            if n >= k:
                out[user] = rng.choice(int(n), k, replace=False)
            else:
                out[user, :n] = rng.permutation(int(n))
    return out


def hand_back_to(rng: np.random.Generator, population: np.ndarray, k: int):
    def draw(user: int) -> np.ndarray:
        n = int(population[user])
        if n >= k:
            return rng.choice(n, k, replace=False)
        row = np.zeros(k, dtype=np.int64)
        row[:n] = rng.permutation(n)
        return row

    return draw


def state(rng: np.random.Generator) -> dict:
    """The generator's state, without the stale buffer word that nothing reads."""
    st = dict(rng.bit_generator.state)
    if not st.get("has_uint32", 1):
        st["uinteger"] = 0
    return st


def populations(seed: int, k: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    population = g.integers(0, 20000, size=200)
    population[::7] = g.integers(0, k + 2, size=len(population[::7]))  # empty, < k, = k
    return population


@pytest.mark.parametrize("k", [1, 2, 7, 100, 300])
@pytest.mark.parametrize("before", ["fresh", "half_word_buffered", "after_a_double"])
def test_draws_and_final_state_are_numpys(k, before):
    population = populations(k, k)
    if k == 300:
        population[:5] = [12000, 14000, 11000, 14999, 10001]  # NumPy's tail-shuffle branch
        assert not floyd_branch(population[:5], k).any()
    expected_rng, rng = np.random.default_rng(k), np.random.default_rng(k)
    for g in (expected_rng, rng):
        if before == "half_word_buffered":
            g.integers(0, 5, size=1, dtype=np.uint32)  # leaves a 32-bit half in the buffer
        elif before == "after_a_double":
            g.random()
    expected = numpy_calls(expected_rng, population, k)
    got = choices_without_replacement(rng, population, k, hand_back_to(rng, population, k))
    np.testing.assert_array_equal(got, expected)
    assert state(rng) == state(expected_rng)
    assert rng.random() == expected_rng.random()  # and the stream goes on alike


def test_batches_of_one_user_carry_the_buffered_half_word(monkeypatch):
    monkeypatch.setattr(draws, "_BATCH_USERS", 1)
    population = np.array([5, 9, 3, 50, 50, 0, 7, 1000, 2, 64])
    for k in (1, 3):
        expected_rng, rng = np.random.default_rng(3), np.random.default_rng(3)
        expected = numpy_calls(expected_rng, population, k)
        got = choices_without_replacement(rng, population, k, hand_back_to(rng, population, k))
        np.testing.assert_array_equal(got, expected)
        assert state(rng) == state(expected_rng)


def test_too_few_words_for_a_user_draws_nothing_and_leaves_the_generator():
    rng = np.random.default_rng(0)
    rng.integers(0, 5, size=1, dtype=np.uint32)
    before = state(rng)
    out, marks = (
        np.zeros((1, 40), dtype=np.int64),
        (np.zeros(1001, np.int64), np.zeros(1, np.int64)),
    )
    population = np.array([1000])
    assert draws._floyd_users(rng.bit_generator, 0, 1, 10, population, 40, out, marks) == 0
    assert state(rng) == before
    # ... and the public call asks for more words until the user fits.
    expected = numpy_calls(np.random.default_rng(0), population, 40)
    np.testing.assert_array_equal(
        choices_without_replacement(np.random.default_rng(0), population, 40, print), expected
    )


@pytest.mark.parametrize("bits", [np.random.MT19937, np.random.Philox])
def test_other_bit_generators_get_numpys_calls(bits):
    population = populations(1, 4)
    expected_rng, rng = np.random.Generator(bits(5)), np.random.Generator(bits(5))
    expected = numpy_calls(expected_rng, population, 4)
    got = choices_without_replacement(rng, population, 4, hand_back_to(rng, population, 4))
    np.testing.assert_array_equal(got, expected)
    assert rng.random() == expected_rng.random()


def test_rows_are_distinct_positions_within_each_population():
    population = np.array([100, 20, 20000, 8])
    rows = choices_without_replacement(np.random.default_rng(1), population, 8, print)
    for n, row in zip(population, rows, strict=True):
        assert len(set(row.tolist())) == 8 and row.min() >= 0 and row.max() < n
