"""Fuzzing the readers and preprocessing: any bytes, any rows end in data or a UserError."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adarec.config import CHOICES, DataConfig
from adarec.data.preprocess import prepare
from adarec.data.readers import read_file
from adarec.errors import UserError

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
FORMATS = CHOICES["data.format"]
HEADERS = {
    "csv": "user_id,item_id,timestamp",
    "atomic": "user_id:token\titem_id:token\ttimestamp:float",
    "ml2k": "userID\tmovieID\trating\ttimestamp",
}

# Field text biased towards what breaks parsers: separators, quotes, line breaks, blanks.
FIELD = st.text(alphabet=st.sampled_from('ab1 0.-e,;\t"\n\r\x00é'), max_size=6)
NUMBER = st.one_of(st.integers(-5, 10**12).map(str), st.floats(allow_nan=True).map(repr), FIELD)


def _read_or_refuse(path: Path, cfg: DataConfig) -> None:
    try:
        data = read_file(path, cfg)
    except UserError:
        return
    assert len(data.users) == len(data.items) == len(data.timestamps) > 0


@FUZZ
@given(content=st.binary(max_size=300), fmt=st.sampled_from(FORMATS))
def test_random_bytes(tmp_path: Path, content: bytes, fmt: str):
    path = tmp_path / "data.csv"
    path.write_bytes(content)
    _read_or_refuse(path, DataConfig(dataset=str(path), format=fmt))


@FUZZ
@given(
    fmt=st.sampled_from(sorted(HEADERS)),
    rows=st.lists(st.tuples(FIELD, FIELD, NUMBER, NUMBER), max_size=12),
    sep=st.sampled_from([",", "\t", ";"]),
)
def test_random_rows(tmp_path: Path, fmt: str, rows: list, sep: str):
    header = HEADERS[fmt]
    width = header.count("\t") + header.count(",") + 1
    lines = [sep.join(row[:width]) for row in rows]
    path = tmp_path / ("data.inter" if fmt == "atomic" else "data.csv")
    path.write_text(header + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    _read_or_refuse(path, DataConfig(dataset=str(path), format=fmt))


@FUZZ
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", "u3", "", " "]),
            st.sampled_from(["i1", "i2", "i3", "i4", ""]),
            st.integers(0, 5),
        ),
        max_size=40,
    ),
    duplicates=st.sampled_from(["drop", "keep"]),
)
def test_prepare_random_logs(tmp_path: Path, rows: list, duplicates: str):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    cfg = DataConfig(
        dataset=str(path),
        min_user_count=1,
        min_item_count=1,
        num_negatives=2,
        duplicates=duplicates,
    )
    try:
        data = prepare(cfg, 0, tmp_path / "cache")
    except UserError:
        return
    # Whatever was kept has real ids, sequences long enough for leave-one-out, and (by
    # default) no exact duplicate.
    assert all(raw.strip() for raw in data.item_ids[1:] + data.user_ids)
    assert all(len(seq) >= 3 for seq in data.sequences)
    if duplicates == "drop":
        kept = {(u.strip(), i, t) for u, i, t in rows if u.strip() and i}
        assert data.num_interactions <= len(kept)
