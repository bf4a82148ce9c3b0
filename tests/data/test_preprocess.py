from pathlib import Path

import numpy as np
import pytest

import adarec.data.preprocess as preprocess
from adarec.config import DataConfig
from adarec.data.preprocess import PAD, exact_duplicates, kcore, prepare, sample_negatives
from adarec.data.stats import describe, format_stats
from adarec.errors import UserError

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write_inter(path: Path, rows: list[tuple[str, str, float, float]]) -> Path:
    path.write_text(HEADER + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    return path


def config(path: Path, **options) -> DataConfig:
    defaults = {"min_user_count": 1, "min_item_count": 1, "num_negatives": 2}
    return DataConfig(dataset=str(path), **{**defaults, **options})


def raw_sequences(data) -> list[list[str]]:
    return [[data.item_ids[i] for i in seq] for seq in data.sequences]


def test_stable_sort_keeps_file_order_of_tied_timestamps(tmp_path):
    rows = [
        ("b", "x", 1, 50),
        ("a", "p", 1, 20),
        ("a", "q", 1, 10),
        ("a", "r", 1, 20),
        ("b", "y", 1, 50),
        ("a", "s", 1, 20),
        ("b", "z", 1, 40),
    ]
    data = prepare(config(write_inter(tmp_path / "t.inter", rows)), 0, tmp_path / "cache")
    assert data.user_ids == ["b", "a"]  # users in order of first appearance
    assert raw_sequences(data) == [["z", "x", "y"], ["q", "p", "r", "s"]]
    # Items numbered 1..N in order of first appearance in the sorted sequences.
    assert data.item_ids == [PAD, "z", "x", "y", "q", "p", "r", "s"]
    assert data.item_index() == {"z": 1, "x": 2, "y": 3, "q": 4, "p": 5, "r": 6, "s": 7}
    assert all(seq.dtype == np.int64 for seq in data.sequences)
    assert (data.num_users, data.num_items, data.num_interactions) == (2, 7, 7)


# A hand-made log where one pass and the iterative core differ (min count 2 for both):
# the single pass drops D, then users u3 and u4, leaving A and C with one row each;
# iterating unravels everything but the dense block u5, u6 x E, F.
KCORE_ROWS = [
    ("u1", "A"), ("u1", "B"), ("u2", "B"), ("u2", "C"), ("u3", "A"), ("u4", "C"), ("u4", "D"),
    ("u5", "E"), ("u5", "F"), ("u6", "E"), ("u6", "F"),
]  # fmt: skip


def kcore_arrays():
    users = np.array([int(u[1:]) for u, _ in KCORE_ROWS])
    items = np.array(["ABCDEF".index(i) for _, i in KCORE_ROWS])
    return users, items


def test_kcore_single_pass_versus_iterative():
    users, items = kcore_arrays()
    single, passes = kcore(users, items, 2, 2, "single")
    assert passes == 1
    assert [KCORE_ROWS[k] for k in single] == [
        ("u1", "A"), ("u1", "B"), ("u2", "B"), ("u2", "C"),
        ("u5", "E"), ("u5", "F"), ("u6", "E"), ("u6", "F"),
    ]  # fmt: skip
    iterative, passes = kcore(users, items, 2, 2, "iterative")
    assert [KCORE_ROWS[k] for k in iterative] == [
        ("u5", "E"), ("u5", "F"), ("u6", "E"), ("u6", "F"),
    ]  # fmt: skip
    assert passes > 2


def test_prepare_logs_each_filter(tmp_path):
    dense = [(u, i) for u in ("u5", "u6", "u7") for i in "EFG"]
    pairs = [("u1", "A"), ("u1", "B"), ("u1", "E"), ("u2", "B"), *dense]
    path = write_inter(tmp_path / "k.inter", [(u, i, 1, t) for t, (u, i) in enumerate(pairs)])
    counts = ("rows_before", "rows_after", "users_before", "users_after")
    counts += ("items_before", "items_after")

    single = prepare(config(path, min_user_count=2, min_item_count=2, kcore="single"), 0, tmp_path)
    core, short = single.filter_log
    assert core["step"] == "single k-core (users >= 2, items >= 2)"
    assert [core[k] for k in counts] == [13, 11, 5, 4, 5, 4]  # u1 keeps B and E
    assert short["step"] == "sequences >= 3 items"
    assert [short[k] for k in counts] == [11, 9, 4, 3, 4, 3]

    iterative = prepare(config(path, min_user_count=2, min_item_count=2), 0, tmp_path)
    core = iterative.filter_log[0]
    assert [core[k] for k in counts] == [13, 9, 5, 3, 5, 3]
    assert core["passes"] == 4
    assert iterative.user_ids == single.user_ids == ["u5", "u6", "u7"]


def test_short_sequences_are_dropped(tmp_path):
    rows = [("a", "x", 1, 1), ("a", "y", 1, 2), ("b", "x", 1, 1), ("b", "y", 1, 2)]
    rows += [("b", "z", 1, 3)]
    data = prepare(config(write_inter(tmp_path / "s.inter", rows)), 0, tmp_path / "c")
    assert data.user_ids == ["b"]
    last = data.filter_log[-1]
    assert (last["users_before"], last["users_after"]) == (2, 1)


def test_rating_threshold(tmp_path):
    rows = [("a", f"i{k}", k, k) for k in range(1, 6)]
    data = prepare(config(write_inter(tmp_path / "r.inter", rows), rating_threshold=3), 0, tmp_path)
    assert raw_sequences(data) == [["i3", "i4", "i5"]]
    assert data.filter_log[0]["step"] == "rating >= 3"
    assert (data.filter_log[0]["rows_before"], data.filter_log[0]["rows_after"]) == (5, 3)


def test_rating_threshold_needs_ratings(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("user_id,item_id,timestamp\na,b,1\n")
    with pytest.raises(UserError, match="has no ratings"):
        prepare(config(path, rating_threshold=4.0), 0, tmp_path / "c")


def test_filters_leaving_nothing_name_the_filters_and_leave_no_cache(tmp_path):
    rows = [("a", "x", 1, 1), ("a", "y", 1, 2), ("a", "z", 1, 3)]
    path = write_inter(tmp_path / "n.inter", rows)
    cache = tmp_path / "cache"
    with pytest.raises(UserError) as err:
        prepare(config(path, min_user_count=5, min_item_count=5), 0, cache)
    message = str(err.value)
    assert "no interactions left" in message
    assert "iterative k-core (users >= 5, items >= 5)" in message
    assert not cache.exists() or not any(cache.iterdir())


def test_failed_cache_write_leaves_no_file(tmp_path, monkeypatch):
    rows = [("a", "x", 1, 1), ("a", "y", 1, 2), ("a", "z", 1, 3)]
    path = write_inter(tmp_path / "w.inter", rows)

    def broken_save(file, array):
        Path(file).write_bytes(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(preprocess.np, "save", broken_save)
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="cannot write .*disk full"):
        prepare(config(path), 0, cache)
    assert list(cache.iterdir()) == []


def test_second_call_loads_the_cache(tmp_path, monkeypatch):
    rows = [("a", "x", 1, 1), ("a", "y", 1, 2), ("a", "z", 1, 3), ("b", "z", 1, 1)]
    rows += [("b", "y", 1, 2), ("b", "w", 1, 3)]
    path = write_inter(tmp_path / "c.inter", rows)
    cache = tmp_path / "cache"
    first = prepare(config(path), 7, cache)
    assert len(list(cache.glob("c-*"))) == 1

    def no_read(*args, **kwargs):
        raise AssertionError("read instead of using the cache")

    monkeypatch.setattr(preprocess, "_build", no_read)
    second = prepare(config(path), 7, cache)
    assert second.item_ids == first.item_ids
    assert second.user_ids == first.user_ids
    assert second.filter_log == first.filter_log
    assert second.options == first.options == {**second.options, "seed": 7}
    for a, b in zip(first.sequences, second.sequences, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.negatives, second.negatives)
    # Another seed, option or file content is another cache entry.
    with pytest.raises(AssertionError, match="read instead"):
        prepare(config(path), 8, cache)
    with pytest.raises(AssertionError, match="read instead"):
        prepare(config(path, num_negatives=1), 7, cache)
    write_inter(path, rows[:3])
    with pytest.raises(AssertionError, match="read instead"):
        prepare(config(path), 7, cache)


def test_corrupt_cache_is_rebuilt(tmp_path):
    rows = [("a", "x", 1, 1), ("a", "y", 1, 2), ("a", "z", 1, 3)]
    path = write_inter(tmp_path / "c.inter", rows)
    cache = tmp_path / "cache"
    prepare(config(path), 0, cache)
    (folder,) = cache.glob("c-*")
    (folder / "items.npy").write_bytes(b"garbage")
    data = prepare(config(path), 0, cache)
    assert raw_sequences(data) == [["x", "y", "z"]]
    assert (folder / "items.npy").stat().st_size > 100


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAREC_CACHE_DIR", str(tmp_path / "env-cache"))
    prepare(DataConfig(dataset="synthetic", synthetic_users=4, synthetic_items=6), 0)
    assert len(list((tmp_path / "env-cache").glob("synthetic-*/meta.json"))) == 1


def test_synthetic_prepare_is_deterministic(tmp_path):
    cfg = DataConfig(dataset="synthetic", synthetic_users=30, synthetic_items=20)
    first = prepare(cfg, 5, tmp_path / "one")
    again = prepare(cfg, 5, tmp_path / "two")
    assert first.name == "synthetic"
    assert first.item_ids == again.item_ids
    for a, b in zip(first.sequences, again.sequences, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.negatives, again.negatives)


def test_negatives_avoid_the_users_items_and_follow_the_seed():
    rng = np.random.default_rng(0)
    sequences = [rng.choice(np.arange(1, 41), size=n, replace=False) for n in (3, 10, 25)]
    negatives = sample_negatives(sequences, 40, 12, np.random.default_rng(1))
    assert negatives.shape == (3, 12) and negatives.dtype == np.int64
    for seq, row in zip(sequences, negatives, strict=True):
        assert len(set(row)) == 12
        assert not set(row) & set(seq)
        assert row.min() >= 1 and row.max() <= 40
    np.testing.assert_array_equal(
        negatives, sample_negatives(sequences, 40, 12, np.random.default_rng(1))
    )
    assert not np.array_equal(
        negatives, sample_negatives(sequences, 40, 12, np.random.default_rng(2))
    )


def test_negatives_repeat_when_too_few_items_remain():
    sequences = [np.array([1, 2, 3]), np.array([1, 2, 3, 4, 5])]
    negatives = sample_negatives(sequences, 5, 4, np.random.default_rng(0))
    assert sorted(set(negatives[0])) == [4, 5]
    assert sorted(negatives[0]) == [4, 4, 5, 5]
    assert negatives[1].tolist() == [0, 0, 0, 0]  # nothing left: padding


def test_rows_without_ids_are_dropped_and_counted(tmp_path):
    rows = [("a", "x", 1, 1), ("a", "y", 1, 2), ("a", "z", 1, 3), ("a", "", 1, 4)]
    rows += [("", "x", 1, 5), (" ", "y", 1, 6), ("", "z", 1, 7)]
    data = prepare(config(write_inter(tmp_path / "m.inter", rows)), 0, tmp_path / "c")
    # Neither an empty item id becomes an item nor do empty user ids make one user.
    assert data.user_ids == ["a"] and raw_sequences(data) == [["x", "y", "z"]]
    entry = data.filter_log[0]
    assert entry["step"] == "rows without a user or item id dropped"
    assert (entry["rows_before"], entry["rows_after"]) == (7, 3)
    assert "rows without a user or item id dropped: 7 -> 3" in format_stats(describe(data))


def test_exact_duplicates_are_dropped_by_default(tmp_path):
    once = [("a", "x", 1, 1), ("a", "y", 1, 2), ("a", "z", 1, 3), ("b", "x", 1, 1)]
    once += [("b", "z", 1, 2), ("b", "y", 1, 2)]  # same time, other items: not duplicates
    path = write_inter(tmp_path / "d.inter", once * 3)
    data = prepare(config(path), 0, tmp_path / "c")
    assert raw_sequences(data) == [["x", "y", "z"], ["x", "z", "y"]]
    entry = data.filter_log[0]
    assert entry["step"] == "exact duplicates (user, item, timestamp) dropped"
    assert (entry["rows_before"], entry["rows_after"]) == (18, 6)
    kept = prepare(config(path, duplicates="keep"), 0, tmp_path / "c")
    assert kept.num_interactions == 18


def test_exact_duplicates_mask_keeps_the_first_row():
    users, items = np.array([0, 0, 1, 0, 0]), np.array([5, 5, 5, 6, 5])
    times = np.array([1.0, 1.0, 1.0, 1.0, 2.0])
    assert exact_duplicates(users, items, times).tolist() == [False, True, False, False, False]


@pytest.mark.parametrize("kind", ["folder", "empty"])
def test_unusable_data_path_is_named_before_hashing(tmp_path, kind, monkeypatch):
    path = tmp_path / "data.csv"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_text("")
    monkeypatch.setattr(preprocess, "_file_sha256", lambda p: pytest.fail("hashed first"))
    with pytest.raises(UserError, match="is a directory" if kind == "folder" else "is empty"):
        prepare(config(path), 0, tmp_path / "c")


def test_unwritable_cache_folder_is_named_before_preprocessing(tmp_path, monkeypatch):
    rows = [("a", "x", 1, 1), ("a", "y", 1, 2), ("a", "z", 1, 3)]
    path = write_inter(tmp_path / "w.inter", rows)
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(preprocess, "_build", lambda *a: pytest.fail("built before the check"))
    with pytest.raises(UserError, match="data cache folder .*a file is in the way"):
        prepare(config(path), 0, blocker / "cache")
