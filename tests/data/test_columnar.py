"""The columnar preparation (DuckDB) against the row-by-row reference it replaces, Parquet
input, the fall-back to the row reader, and the memory-mapped cache."""

import csv
import mmap
from pathlib import Path

import duckdb
import numpy as np
import pytest

from adarec.config import DataConfig
from adarec.data import columnar
from adarec.data.preprocess import (
    Sequences,
    build_in_memory,
    prepare,
    sample_negatives,
)
from adarec.data.readers import read_file
from adarec.errors import UserError

USERS = [f"u{k}" for k in range(30)] + ["", " ", "\u3000", "ü ser", 'say "hi", ok']
ITEMS = [f"i{k}" for k in range(45)] + ["", "007", "7", "a,b"]


def log_rows(rows: int, seed: int) -> list[list[str]]:
    """user, item, rating, timestamp: skewed ids (blank and odd ones among them), tied
    timestamps and exact duplicates, not in time order."""
    rng = np.random.default_rng(seed)
    user_p = 1.0 / np.arange(1, len(USERS) + 1)
    item_p = 1.0 / np.arange(1, len(ITEMS) + 1) ** 0.7
    out = []
    for _ in range(rows):
        user = USERS[rng.choice(len(USERS), p=user_p / user_p.sum())]
        item = ITEMS[rng.choice(len(ITEMS), p=item_p / item_p.sum())]
        out.append([user, item, str(rng.integers(1, 6)), str(rng.integers(0, 60))])
        if rng.random() < 0.05:
            out.append(list(out[-1]))
    return out


def write_csv(path: Path, rows: list[list[str]], header: list[str], sep: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=sep)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def reference(cfg: DataConfig, seed: int):
    """Today's preparation before this change: the row reader and NumPy."""
    raw = read_file(Path(cfg.dataset), cfg)
    return build_in_memory(raw, cfg, seed, Path(cfg.dataset).stem, lambda _: None)


def assert_same(columnar_data, reference_data) -> None:
    assert columnar_data.filter_log == reference_data.filter_log
    assert columnar_data.user_ids == reference_data.user_ids
    assert columnar_data.item_ids == reference_data.item_ids
    assert columnar_data.fingerprint() == reference_data.fingerprint()


OPTIONS = [
    {},
    {"rating_col": "rating", "rating_threshold": 3.0},
    {"kcore": "single", "duplicates": "keep", "min_user_count": 3, "min_item_count": 4},
    {"min_user_count": 8, "min_item_count": 12, "num_negatives": 40},
]


@pytest.mark.parametrize("kcore_in", ["numpy", "sql"])
@pytest.mark.parametrize("options", OPTIONS, ids=["default", "threshold", "single", "dense"])
def test_same_as_the_row_reader_on_a_fixed_csv(tmp_path, monkeypatch, options, kcore_in):
    if kcore_in == "sql":  # the out-of-core k-core, for logs too large for the codes in memory
        monkeypatch.setattr(columnar, "KCORE_IN_MEMORY_ROWS", 0)
    path = write_csv(tmp_path / "log.csv", log_rows(600, 0), ["user", "item", "rating", "time"])
    cfg = DataConfig(
        dataset=str(path),
        user_col="user",
        item_col="item",
        time_col="time",
        **{"min_user_count": 2, "min_item_count": 2, "num_negatives": 30, **options},
    )
    data = prepare(cfg, 3, tmp_path / "cache")
    assert isinstance(data.sequences, Sequences)  # the columnar path, from its cache
    assert_same(data, reference(cfg, 3))
    if "rating_threshold" not in options:  # blank ids were there to drop
        assert data.filter_log[0]["step"] == "rows without a user or item id dropped"


def test_same_as_the_row_reader_on_atomic_and_retailrocket_files(tmp_path):
    rows = log_rows(500, 1)
    inter = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    path = write_csv(tmp_path / "log.inter", rows, inter, sep="\t")
    cfg = DataConfig(dataset=str(path), min_user_count=2, min_item_count=2, rating_threshold=2)
    assert_same(prepare(cfg, 0, tmp_path / "c"), reference(cfg, 0))

    kinds = ["view", "view", "addtocart", "view", "transaction"]
    events = [
        [str(int(t) * 1000 + 7), u, kinds[k % 5], i, ""] for k, (u, i, _, t) in enumerate(rows)
    ]
    header = ["timestamp", "visitorid", "event", "itemid", "transactionid"]
    path = write_csv(tmp_path / "events.csv", events, header)
    cfg = DataConfig(dataset=str(path), min_user_count=2, min_item_count=2)
    data = prepare(cfg, 0, tmp_path / "c")
    assert_same(data, reference(cfg, 0))
    with pytest.raises(UserError, match=r"no rows with event in \['click'\]; found: "):
        prepare(DataConfig(dataset=str(path), events=["click"]), 0, tmp_path / "c")


def test_negatives_from_flat_columns_are_the_reference_draws():
    rng = np.random.default_rng(0)
    num_items = 60
    sizes = [1, 3, 59, 60, 80, 20, 58, 2]  # some users touched (nearly) every item
    sequences = [rng.integers(1, num_items + 1, size=n) for n in sizes]
    sequences[3] = np.arange(1, num_items + 1)  # touched every item: a row of padding
    offsets = np.r_[0, np.cumsum(sizes)]
    flat = np.concatenate(sequences)
    for k in (0, 1, 5, 30):
        expected = sample_negatives(sequences, num_items, k, np.random.default_rng(9))
        got = columnar.sample_negatives_flat(flat, offsets, num_items, k, np.random.default_rng(9))
        np.testing.assert_array_equal(got, expected)


def test_blank_ids_are_what_str_strip_removes():
    python = {chr(c) for c in range(0x110000) if chr(c).isspace()}
    assert set(columnar.WHITESPACE) == python


def to_parquet(source: Path, target: Path, first: int = 0, end: int = 10**9) -> None:
    """Rows ``first`` to ``end`` of the CSV as Parquet (ids as text, numbers as numbers)."""
    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE log AS SELECT user, item, CAST(rating AS DOUBLE) AS rating, "
        f"CAST(time AS BIGINT) AS time FROM read_csv('{source}', all_varchar = true)"
    )
    con.execute(
        f"COPY (SELECT * FROM log WHERE rowid >= {first} AND rowid < {end} ORDER BY rowid) "
        f"TO '{target}' (FORMAT parquet)"
    )


def test_parquet_file_and_folder_give_the_csv_result(tmp_path):
    rows = log_rows(500, 2)
    path = write_csv(tmp_path / "log.csv", rows, ["user", "item", "rating", "time"])
    columns = {"user_col": "user", "item_col": "item", "time_col": "time"}
    options = {**columns, "min_user_count": 2, "min_item_count": 2, "num_negatives": 10}
    expected = prepare(DataConfig(dataset=str(path), **options), 0, tmp_path / "c")

    to_parquet(path, tmp_path / "log.parquet")
    one = prepare(DataConfig(dataset=str(tmp_path / "log.parquet"), **options), 0, tmp_path / "c")
    assert one.fingerprint() == expected.fingerprint()

    # A folder: its files in path order make the log (here, three slices of the rows).
    folder = tmp_path / "parts"
    (folder / "b").mkdir(parents=True)
    for k, (lo, hi) in enumerate([(0, 150), (150, 320), (320, 10**6)]):
        name = folder / ("a.parquet" if k == 0 else f"b/{k}.pq")
        to_parquet(path, name, lo, hi)
    (folder / "notes.txt").write_text("not data")
    many = prepare(DataConfig(dataset=str(folder), **options), 0, tmp_path / "c")
    assert many.fingerprint() == expected.fingerprint()
    assert many.filter_log == expected.filter_log

    with pytest.raises(UserError, match="has no column 'visitor'; available columns: user"):
        prepare(DataConfig(dataset=str(folder), user_col="visitor"), 0, tmp_path / "c")
    with pytest.raises(UserError, match="not a .parquet file or a folder"):
        prepare(DataConfig(dataset=str(path), format="parquet", **options), 0, tmp_path / "c")
    with duckdb.connect() as con:  # a timestamp missing: named, not sent to the row reader
        con.execute(f"COPY (SELECT 'a' AS user, 'b' AS item, NULL::DOUBLE AS time) TO "
                    f"'{tmp_path / 'null.parquet'}' (FORMAT parquet)")  # fmt: skip
    with pytest.raises(UserError, match="Parquet data .*null.parquet: 1 rows hold a missing"):
        prepare(DataConfig(dataset=str(tmp_path / "null.parquet"), **columns), 0, tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is a directory with no Parquet files"):
        prepare(DataConfig(dataset=str(tmp_path / "empty")), 0, tmp_path / "c")


def test_a_value_the_engine_refuses_is_cited_by_the_row_reader(tmp_path):
    rows = [["a", "x", "1", str(t)] for t in range(40)]
    rows[30][3] = "soon"
    path = write_csv(tmp_path / "bad.csv", rows, ["user_id", "item_id", "rating", "timestamp"])
    with pytest.raises(UserError, match="line 32: column 'timestamp' must be a number, got 'soon'"):
        prepare(DataConfig(dataset=str(path), min_item_count=1), 0, tmp_path / "c")
    rows[30] = ["a", "x", "1"]
    path = write_csv(tmp_path / "short.csv", rows, ["user_id", "item_id", "rating", "timestamp"])
    with pytest.raises(UserError, match="line 32: expected 4 fields, found 3"):
        prepare(DataConfig(dataset=str(path), min_item_count=1), 0, tmp_path / "c")
    assert not [p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]


def test_numbers_read_as_the_row_reader_reads_them(tmp_path):
    # Python's float() takes these; what the engine refuses goes to the row reader.
    odd = [" 5", "5 ", "+5", "1e1", ".5", "5.", "1_0", "0x10", "nan", "-inf"]
    rows = [[f"u{k % 3}", f"i{k % 4}", "1", str(k)] for k in range(24)]
    for value in odd:
        rows[5][3] = value
        path = write_csv(tmp_path / "n.csv", rows, ["user_id", "item_id", "rating", "timestamp"])
        cfg = DataConfig(dataset=str(path), min_user_count=1, min_item_count=1, num_negatives=1)
        try:
            expected = reference(cfg, 0)
        except UserError as exc:
            with pytest.raises(UserError, match=str(exc).split(": ", 1)[1][:20]):
                prepare(cfg, 0, tmp_path / value)
        else:
            assert prepare(cfg, 0, tmp_path / value).fingerprint() == expected.fingerprint()


def test_a_small_memory_limit_gives_the_same_result(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    n = 200_000
    rows = zip(
        (f"user-{u:06d}" for u in rng.integers(0, 8000, n)),
        (f"item-{i:06d}" for i in rng.zipf(1.4, n) % 3000),
        rng.integers(0, 10**6, n).astype(str),
        strict=True,
    )
    path = write_csv(tmp_path / "big.csv", list(rows), ["user_id", "item_id", "timestamp"])
    cfg = DataConfig(dataset=str(path), num_negatives=5)
    # DuckDB keeps at most 48MB in memory: its tables' blocks go to its temporary folder, and
    # sorts, joins and aggregates spill to disk beyond that (24MB is too little here).
    monkeypatch.setenv("ADAREC_DATA_MEMORY", "48MB")
    assert_same(prepare(cfg, 0, tmp_path / "c"), reference(cfg, 0))


def test_unusable_engine_settings_are_named(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "s.csv", [["a", "x", "1"]], ["user_id", "item_id", "timestamp"])
    monkeypatch.setenv("ADAREC_DATA_MEMORY", "lots")
    with pytest.raises(UserError, match="ADAREC_DATA_MEMORY='lots' is not usable"):
        prepare(DataConfig(dataset=str(path)), 0, tmp_path / "c")


def _mapped(array: np.ndarray) -> bool:
    while array is not None and not isinstance(array, mmap.mmap):
        array = array.base
    return isinstance(array, mmap.mmap)


def test_the_cache_is_memory_mapped_and_shards_are_views(tmp_path):
    path = write_csv(tmp_path / "log.csv", log_rows(600, 4), ["user_id", "item_id", "r", "ts"])
    cfg = DataConfig(dataset=str(path), time_col="ts", min_user_count=2, min_item_count=2)
    data = prepare(cfg, 0, tmp_path / "c")
    assert _mapped(data.sequences.items) and _mapped(data.negatives)
    assert data.num_interactions == sum(len(s) for s in list(data.sequences))
    shards = [data.shard(rank, 3) for rank in range(3)]
    assert sum((s.user_ids for s in shards), []) == data.user_ids
    joined = [seq for s in shards for seq in s.sequences]
    assert [list(a) for a in joined] == [list(b) for b in data.sequences]
    np.testing.assert_array_equal(np.concatenate([s.negatives for s in shards]), data.negatives)
    assert all(_mapped(s.sequences.items) for s in shards)
    assert data.sequences[-1].tolist() == list(data.sequences)[-1].tolist()
    assert len(data.sequences[1:4]) == 3


def test_same_as_the_row_reader_on_ml2k_and_30music_files(tmp_path):
    rows = log_rows(400, 5)
    ml2k = [[u, i, r, str(int(t) * 1000 + 1)] for u, i, r, t in rows]
    header = ["userID", "movieID", "rating", "timestamp"]
    path = write_csv(tmp_path / "user_ratedmovies-timestamps.dat", ml2k, header, sep="\t")
    cfg = DataConfig(dataset=str(path), min_user_count=2, min_item_count=2, rating_threshold=3)
    assert_same(prepare(cfg, 0, tmp_path / "c"), reference(cfg, 0))

    sessions = [["7", u, i, t, "a"] for u, i, _, t in rows]
    header = ["UserId", "SessionId", "ItemId", "Time", "ArtistId"]
    path = write_csv(tmp_path / "30music.csv", sessions, header)
    cfg = DataConfig(dataset=str(path), min_user_count=2, min_item_count=2)
    assert_same(prepare(cfg, 0, tmp_path / "c"), reference(cfg, 0))
