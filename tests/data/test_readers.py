from pathlib import Path

import numpy as np
import pytest

from adarec.config import DataConfig
from adarec.data.readers import (
    detect_format,
    detect_separator,
    read_30music,
    read_any,
    read_atomic,
    read_csv,
    read_ml2k,
    read_retailrocket,
)
from adarec.errors import UserError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


ATOMIC = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n"
    "186\t302\t3\t891717742\n"
    "196\t377\t1\t878887116\n"
)
ML2K = (
    "userID\tmovieID\trating\ttimestamp\n"
    "75\t3\t1.0\t1162160236000\n"
    "75\t32\t4.5\t1162160624000\n"
    "78\t1\t4.0\t1163354020500\n"
)
RETAILROCKET = (
    "timestamp,visitorid,event,itemid,transactionid\n"
    "1433221332117,257597,view,355908,\n"
    "1433224214164,992329,view,248676,\n"
    "1433221999827,111016,addtocart,318965,\n"
    "1433221955914,483574,transaction,253185,4000\n"
)
MUSIC = (
    "UserId,SessionId,ItemId,Time,ArtistId\n"
    "7,101,a1,1390000000,9\n"
    "7,101,a2,1390000200,9\n"
    "7,102,a3,1390500000,4\n"
)


def test_read_atomic_strips_types_and_keeps_file_order(tmp_path):
    data = read_atomic(write(tmp_path / "x.inter", ATOMIC))
    assert len(data) == 3
    assert data.users.tolist() == ["196", "186", "196"]
    assert data.items.tolist() == ["242", "302", "377"]
    np.testing.assert_array_equal(data.timestamps, [881250949, 891717742, 878887116])
    np.testing.assert_array_equal(data.ratings, [3, 3, 1])
    assert data.timestamps.dtype == np.float64


def test_read_atomic_without_rating(tmp_path):
    text = "user_id:token\titem_id:token\ttimestamp:float\nu\ti\t5\n"
    data = read_atomic(write(tmp_path / "x.inter", text))
    assert data.ratings is None
    assert data.timestamps.tolist() == [5.0]


@pytest.mark.parametrize("sep", [",", "\t", ";"])
def test_read_csv_detects_the_separator(tmp_path, sep):
    text = sep.join(["who", "what", "when", "stars"]) + "\n" + sep.join(["a", "x", "2", "4.5"])
    data = read_csv(write(tmp_path / "x.txt", text + "\n"), "who", "what", "when", "stars")
    assert data.users.tolist() == ["a"]
    assert data.items.tolist() == ["x"]
    assert data.timestamps.tolist() == [2.0]
    assert data.ratings.tolist() == [4.5]


def test_detect_separator_defaults_to_comma():
    assert detect_separator("a\tb,c\td\n") == "\t"
    assert detect_separator("single\n") == ","


def test_read_ml2k_converts_milliseconds_once(tmp_path):
    data = read_ml2k(write(tmp_path / "user_ratedmovies-timestamps.dat", ML2K))
    np.testing.assert_array_equal(data.timestamps, [1162160236.0, 1162160624.0, 1163354020.5])
    assert data.users.tolist() == ["75", "75", "78"]
    assert data.ratings.tolist() == [1.0, 4.5, 4.0]


def test_read_retailrocket_keeps_chosen_events(tmp_path):
    path = write(tmp_path / "events.csv", RETAILROCKET)
    views = read_retailrocket(path)
    assert views.users.tolist() == ["257597", "992329"]
    assert views.items.tolist() == ["355908", "248676"]
    assert views.timestamps.tolist() == [1433221332.117, 1433224214.164]
    assert views.ratings is None
    both = read_retailrocket(path, events=("view", "transaction"))
    assert both.items.tolist() == ["355908", "248676", "253185"]
    with pytest.raises(UserError, match="no rows with event in \\['purchase'\\]"):
        read_retailrocket(path, events=("purchase",))


def test_read_30music_makes_one_sequence_per_session(tmp_path):
    data = read_30music(write(tmp_path / "music.csv", MUSIC))
    assert data.users.tolist() == ["101", "101", "102"]
    assert data.items.tolist() == ["a1", "a2", "a3"]
    assert data.timestamps.tolist() == [1390000000.0, 1390000200.0, 1390500000.0]


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent.inter"
    with pytest.raises(UserError, match="not found: .*absent.inter"):
        read_atomic(path)


def test_missing_column_lists_the_available_ones(tmp_path):
    path = write(tmp_path / "x.csv", "user,item,time\na,b,1\n")
    with pytest.raises(UserError) as err:
        read_csv(path, "user", "item", "timestamp")
    message = str(err.value)
    assert "no column 'timestamp'" in message
    assert "available columns: user, item, time" in message
    assert str(path) in message


def test_non_numeric_timestamp_cites_its_line(tmp_path):
    # The blank line still counts: the bad value is on line 4 of the file.
    text = "user_id:token\titem_id:token\ttimestamp:float\na\tb\t1\n\nc\td\tsoon\n"
    path = write(tmp_path / "y.inter", text)
    with pytest.raises(UserError, match=r"y.inter, line 4: column 'timestamp' .*'soon'"):
        read_atomic(path)


def test_non_numeric_rating_cites_its_line(tmp_path):
    path = write(tmp_path / "x.inter", ATOMIC.replace("\t1\t878887116", "\tgood\t878887116"))
    with pytest.raises(UserError, match=r"line 4: column 'rating' must be a number, got 'good'"):
        read_atomic(path)


def test_not_a_number_is_rejected(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\na,b,nan\n")
    with pytest.raises(UserError, match="line 2: column 't'"):
        read_csv(path, "u", "i", "t")


def test_short_row_cites_its_line(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\na,b,1\na,b\n")
    with pytest.raises(UserError, match="line 3: expected 3 fields, found 2"):
        read_csv(path, "u", "i", "t")


def test_row_with_extra_fields_is_refused(tmp_path):
    path = write(tmp_path / "x.csv", "u,i,t\na,b,1\na,b,2,surplus\n")
    with pytest.raises(UserError, match="line 3: expected 3 fields, found 4"):
        read_csv(path, "u", "i", "t")


def test_unclosed_quote_cites_the_line_where_it_opens(tmp_path):
    # The open quote swallows every later line into one record; the error must name line 52,
    # not the last line of the file.
    rows = ["u,i,t"] + [f"u{k % 7},i{k % 11},{k}" for k in range(50)] + ['u1,"i2,52']
    rows += [f"u{k % 7},i{k % 11},{k}" for k in range(53, 1503)]
    path = write(tmp_path / "x.csv", "\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"line 52: .*runs on to line 1502: is a quote not closed"):
        read_csv(path, "u", "i", "t")


def test_unclosed_quote_over_the_field_limit_cites_its_line(tmp_path):
    rows = ["u,i,t", "a,b,1", 'a,"b,2'] + ["a,b,3" * 10] * 30_000
    path = write(tmp_path / "x.csv", "\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"line 3: field larger than field limit"):
        read_csv(path, "u", "i", "t")


@pytest.mark.parametrize("text", ["", "\n", "u,i,t\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path / "x.csv", text)
    with pytest.raises(UserError, match="is empty"):
        read_csv(path, "u", "i", "t")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("a.inter", ATOMIC, "atomic"),
        ("a.tsv", ATOMIC, "atomic"),
        ("ratings.dat", ML2K, "ml2k"),
        ("log.csv", RETAILROCKET, "retailrocket"),
        ("sessions.csv", MUSIC, "30music"),
        ("other.csv", "user_id,item_id,timestamp\nu,i,1\n", "csv"),
    ],
)
def test_detect_format(tmp_path, name, text, expected):
    assert detect_format(write(tmp_path / name, text), DataConfig()) == expected


def test_read_any_dispatches_on_detected_format(tmp_path):
    path = write(tmp_path / "events.csv", RETAILROCKET)
    data = read_any(DataConfig(dataset=str(path)))
    assert data.items.tolist() == ["355908", "248676"]


def test_read_any_csv_uses_configured_columns(tmp_path):
    path = write(tmp_path / "x.csv", "who;what;when\nu;i;7\n")
    cfg = DataConfig(str(path), format="csv", user_col="who", item_col="what", time_col="when")
    data = read_any(cfg)
    assert (data.users.tolist(), data.items.tolist(), data.timestamps.tolist()) == (
        ["u"],
        ["i"],
        [7.0],
    )


def test_read_any_unknown_dataset_lists_known_names():
    with pytest.raises(UserError, match="unknown dataset 'ml-20m'.*ml-100k, ml-1m, synthetic"):
        read_any(DataConfig(dataset="ml-20m"))


def test_read_any_synthetic_is_seeded():
    cfg = DataConfig(dataset="synthetic", synthetic_users=5, synthetic_items=10)
    first, again = read_any(cfg, seed=3), read_any(cfg, seed=3)
    np.testing.assert_array_equal(first.items, again.items)
    assert len(first) == 5 * cfg.synthetic_length
