import numpy as np
import pytest

from adarec.data.synthetic import make_synthetic
from adarec.errors import UserError


def test_shape_and_determinism():
    data = make_synthetic(num_users=20, num_items=15, length=8, seed=1)
    again = make_synthetic(num_users=20, num_items=15, length=8, seed=1)
    other = make_synthetic(num_users=20, num_items=15, length=8, seed=2)
    assert len(data) == 160
    assert data.ratings is None
    np.testing.assert_array_equal(data.items, again.items)
    np.testing.assert_array_equal(data.timestamps, again.timestamps)
    assert not np.array_equal(data.items, other.items)
    assert set(data.users) == {f"u{k}" for k in range(20)}
    assert set(data.items) <= {f"i{k}" for k in range(15)}


def test_timestamps_increase_per_user():
    data = make_synthetic(num_users=10, num_items=30, length=12, seed=0)
    for user in set(data.users):
        times = data.timestamps[data.users == user]
        assert np.all(np.diff(times) > 0)


def test_order_predicts_next_item_far_better_than_popularity():
    data = make_synthetic(num_users=300, num_items=50, length=20, seed=0)
    items = np.array([int(name[1:]) for name in data.items]).reshape(300, 20)
    train, test = items[:200], items[200:]
    transitions = np.zeros((50, 50))
    np.add.at(transitions, (train[:, :-1].ravel(), train[:, 1:].ravel()), 1)
    top10_next = np.argsort(-transitions, axis=1)[:, :10]
    popular10 = np.argsort(-np.bincount(train.ravel(), minlength=50))[:10]
    prev, nxt = test[:, :-1].ravel(), test[:, 1:].ravel()
    order_hits = np.mean([n in top10_next[p] for p, n in zip(prev, nxt, strict=True)])
    popularity_hits = np.isin(nxt, popular10).mean()
    assert order_hits > 0.8
    assert popularity_hits < 0.5
    assert order_hits > popularity_hits + 0.4


def test_bad_parameters():
    with pytest.raises(UserError, match="synthetic_length >= 3"):
        make_synthetic(num_users=5, num_items=10, length=2, seed=0)


def test_order_pattern_follows_the_item_three_steps_back():
    import numpy as np

    from adarec.data.synthetic import FOLLOW_PROB, ORDER_LAG

    log = make_synthetic(200, 50, 30, seed=3, pattern="order")
    seqs = np.array([int(i[1:]) for i in log.items]).reshape(200, 30)
    # The successor of each item is the item that most often follows it at the lag.
    lagged = np.stack([seqs[:, :-ORDER_LAG].ravel(), seqs[:, ORDER_LAG:].ravel()], axis=1)
    successor = {}
    for a in range(50):
        after = lagged[lagged[:, 0] == a, 1]
        successor[a] = np.bincount(after, minlength=50).argmax()
    follows = np.mean([successor[a] == b for a, b in lagged])
    assert follows > FOLLOW_PROB - 0.05
    # ... while the very next item is mostly not that successor: the lag matters.
    pairs = zip(seqs[:, :-1].ravel(), seqs[:, 1:].ravel(), strict=True)
    nxt = np.mean([successor[a] == b for a, b in pairs])
    assert nxt < 0.2


def test_unknown_pattern_is_a_user_error():
    with pytest.raises(UserError, match="pattern"):
        make_synthetic(10, 10, 10, seed=0, pattern="zigzag")
