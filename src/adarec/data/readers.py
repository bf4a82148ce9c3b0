"""Readers: one per source format, each returning raw ``Interactions`` in file order.

Every problem a user can cause (a missing file or column, a value that is not a number, an
empty file) ends in one ``UserError`` naming the file and, for bad values, the 1-based line.
"""

from __future__ import annotations

import csv
import gc
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import numpy as np

from adarec.config import DataConfig
from adarec.data.builtin import BUILTIN, dataset_path
from adarec.data.interactions import Interactions
from adarec.data.synthetic import make_synthetic
from adarec.errors import UserError

SEPARATORS = ("\t", ",", ";")
MS_PER_SECOND = 1000.0
ENCODING = "utf-8-sig"  # tolerates a byte-order mark before the header


def detect_separator(header_line: str) -> str:
    """The separator the header uses most: tab, comma or semicolon (comma when none)."""
    counts = {sep: header_line.count(sep) for sep in SEPARATORS}
    best = max(SEPARATORS, key=counts.__getitem__)
    return best if counts[best] else ","


def read_header(path: Path, sep: str = "auto", strip_types: bool = False) -> tuple[list[str], str]:
    """Column names of a delimited file and the separator used (resolved when ``auto``)."""
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if not path.is_file():
        raise UserError(f"data path is not a file: {path}")
    try:
        with path.open(newline="", encoding=ENCODING) as fh:
            first = fh.readline()
    except UnicodeDecodeError:
        raise UserError(f"data file {path} is not UTF-8 text") from None
    if not first.strip():
        raise UserError(f"data file {path} is empty (no header line)")
    sep = detect_separator(first) if sep == "auto" else sep
    try:
        names = [name.strip() for name in next(csv.reader([first], delimiter=sep))]
    except csv.Error as exc:
        raise UserError(f"{path}, line 1 (the header): {exc}") from None
    if strip_types:  # RecBole atomic headers read "name:type"
        names = [name.split(":", 1)[0] for name in names]
    return names, sep


@dataclass
class _Table:
    """Selected columns of a delimited file, as strings, with what is needed to cite lines."""

    path: Path
    sep: str
    columns: dict[str, list[str]]

    def strings(self, name: str) -> np.ndarray:
        return np.array(self.columns[name], dtype=object)

    def numbers(self, name: str) -> np.ndarray:
        """The column as float64; a value that is not a finite number is a UserError."""
        values = self.columns[name]
        try:
            array = np.array(values, dtype=np.float64)
        except ValueError:
            array = None
        if array is not None and np.isfinite(array).all():
            return array
        # Slow path, only on bad input: find the first bad value and cite its line.
        for k, value in enumerate(values):
            if not _is_finite_number(value):
                line, _ = _find_row(self, lambda index, _row, k=k: index == k)
                raise UserError(
                    f"{self.path}, line {line}: column '{name}' must be a number, got {value!r}"
                )
        return np.array([float(v) for v in values], dtype=np.float64)


def _is_finite_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _records(path: Path, sep: str) -> Iterator[tuple[int, int, list[str]]]:
    """``(first line, last line, fields)`` of every non-blank data record, 1-based lines.

    A record spans several lines when a quoted field holds a line break, or when a quote is
    never closed: then the record runs on, and its first line is where the problem is.
    """
    with path.open(newline="", encoding=ENCODING) as fh:
        reader = csv.reader(fh, delimiter=sep)
        next(reader)
        while True:
            first = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                runs_on = _runs_on(first, reader.line_num)
                raise UserError(f"{path}, line {first}: {exc}{runs_on}") from None
            if row:
                yield first, reader.line_num, row


def _runs_on(first: int, last: int) -> str:
    return f" (the record runs on to line {last}: is a quote not closed?)" if last > first else ""


def _find_row(table: _Table, predicate: Callable[[int, list[str]], bool]) -> tuple[int, list[str]]:
    """The first line and fields of the first data row (blank lines skipped) that matches."""
    for index, (first, _, row) in enumerate(_records(table.path, table.sep)):
        if predicate(index, row):
            return first, row
    raise AssertionError("no matching row")  # callers only ask for rows that exist


def _malformed_row(path: Path, sep: str, width: int) -> UserError:
    """The error for the first record that cannot be parsed or has a wrong number of fields."""
    for first, last, row in _records(path, sep):
        if len(row) != width:
            return UserError(
                f"{path}, line {first}: expected {width} fields, "
                f"found {len(row)}{_runs_on(first, last)}"
            )
    raise AssertionError("no malformed row")  # only called after the fast path found one


class _WrongWidth(Exception):
    """A row of the fast reading loop has the wrong number of fields."""


def _wrong_width() -> bool:
    raise _WrongWidth


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: a million new row tuples (they hold no cycles)
    would otherwise trigger collections that double the reading time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_table(
    path: Path,
    required: Sequence[str],
    optional: Iterable[str] = (),
    sep: str = "auto",
    strip_types: bool = False,
) -> _Table:
    """Read the required columns (at least two) and the optional ones that exist."""
    path = Path(path)
    header, sep = read_header(path, sep, strip_types)
    for name in required:
        if name not in header:
            raise UserError(
                f"data file {path} has no column '{name}'; available columns: {', '.join(header)}"
            )
    names = list(required) + [name for name in optional if name in header]
    index = [header.index(name) for name in names]
    get = itemgetter(*index)
    width = len(header)
    table = _Table(path, sep, {})
    try:
        with _gc_paused():
            with path.open(newline="", encoding=ENCODING) as fh:
                reader = csv.reader(fh, delimiter=sep)
                next(reader)
                # Every row must have the header's fields: a missing or extra field, or a
                # quote that swallows the following lines, is refused (the slow path cites
                # the line where the bad record starts).
                rows = [get(row) for row in reader if row and (len(row) == width or _wrong_width())]
            table.columns = {name: [row[k] for row in rows] for k, name in enumerate(names)}
    except (_WrongWidth, csv.Error):
        raise _malformed_row(path, sep, width) from None
    except UnicodeDecodeError:
        raise UserError(f"data file {path} is not UTF-8 text") from None
    if not rows:
        raise UserError(f"data file {path} is empty (a header but no data rows)")
    return table


def _interactions(
    table: _Table, user: str, item: str, time: str, rating: str = "", time_scale: float = 1.0
) -> Interactions:
    timestamps = table.numbers(time)
    if time_scale != 1.0:
        timestamps /= time_scale
    return Interactions(
        users=table.strings(user),
        items=table.strings(item),
        timestamps=timestamps,
        ratings=table.numbers(rating) if rating and rating in table.columns else None,
    )


def read_atomic(path: str | Path) -> Interactions:
    """RecBole atomic ``.inter`` file: tab-separated, header ``user_id:token  item_id:token ...``.

    ``rating`` is optional; ``timestamp`` is taken as seconds.
    """
    table = _read_table(
        Path(path), ["user_id", "item_id", "timestamp"], ["rating"], sep="\t", strip_types=True
    )
    return _interactions(table, "user_id", "item_id", "timestamp", "rating")


def read_csv(
    path: str | Path,
    user_col: str,
    item_col: str,
    time_col: str,
    rating_col: str = "",
    sep: str = "auto",
) -> Interactions:
    """Any delimited file with a header; ``sep="auto"`` picks tab, comma or semicolon."""
    required = [user_col, item_col, time_col] + ([rating_col] if rating_col else [])
    table = _read_table(Path(path), required, sep=sep)
    return _interactions(table, user_col, item_col, time_col, rating_col)


def read_ml2k(path: str | Path) -> Interactions:
    """hetrec2011 MovieLens-2k ``user_ratedmovies-timestamps.dat`` (timestamps in ms)."""
    table = _read_table(Path(path), ["userID", "movieID", "rating", "timestamp"], sep="\t")
    return _interactions(table, "userID", "movieID", "timestamp", "rating", MS_PER_SECOND)


def read_retailrocket(
    path: str | Path, events: Iterable[str] = ("view",), event_col: str = "event"
) -> Interactions:
    """RetailRocket ``events.csv`` (timestamps in ms), keeping only the given event types."""
    path = Path(path)
    events = list(events)
    table = _read_table(path, ["visitorid", "itemid", "timestamp", event_col], sep=",")
    data = _interactions(table, "visitorid", "itemid", "timestamp", time_scale=MS_PER_SECOND)
    kinds = table.strings(event_col)
    keep = np.isin(kinds, events)
    if not keep.any():
        found = ", ".join(sorted(set(kinds.tolist()))[:10])
        raise UserError(
            f"data file {path} has no rows with {event_col} in {events}; found: {found}"
        )
    return Interactions(data.users[keep], data.items[keep], data.timestamps[keep])


def read_30music(
    path: str | Path,
    session_col: str = "SessionId",
    item_col: str = "ItemId",
    time_col: str = "Time",
    sep: str = "auto",
) -> Interactions:
    """30Music session data (``UserId,SessionId,ItemId,Time,ArtistId``): one sequence per
    session, so the returned ``users`` are session ids."""
    table = _read_table(Path(path), [session_col, item_col, time_col], sep=sep)
    return _interactions(table, session_col, item_col, time_col)


def detect_format(path: Path, cfg: DataConfig) -> str:
    """Guess a file's format from its name and header."""
    if path.suffix == ".inter":
        return "atomic"
    header, _ = read_header(path)
    names = set(header)
    typed = {name.split(":", 1)[0] for name in header if ":" in name}
    if {"user_id", "item_id"} <= typed:
        return "atomic"
    if {"userID", "movieID", "rating", "timestamp"} <= names:
        return "ml2k"
    if {"visitorid", "itemid", "timestamp", cfg.event_col} <= names:
        return "retailrocket"
    if {cfg.session_col, "ItemId", "Time"} <= names:
        return "30music"
    return "csv"


def read_file(path: Path, cfg: DataConfig) -> Interactions:
    """Read a user-supplied file in ``cfg.format`` (detected when ``auto``)."""
    fmt = detect_format(path, cfg) if cfg.format == "auto" else cfg.format
    if fmt == "atomic":
        return read_atomic(path)
    if fmt == "ml2k":
        return read_ml2k(path)
    if fmt == "retailrocket":
        return read_retailrocket(path, cfg.events, cfg.event_col)
    if fmt == "30music":
        return read_30music(path, cfg.session_col, sep=cfg.sep)
    if fmt == "csv":
        return read_csv(path, cfg.user_col, cfg.item_col, cfg.time_col, cfg.rating_col, cfg.sep)
    raise UserError(f"unknown data format '{fmt}'")


def read_any(cfg: DataConfig, seed: int = 0) -> Interactions:
    """Interactions of ``cfg.dataset``: a built-in name, ``synthetic`` (seeded) or a file."""
    path = dataset_path(cfg.dataset)
    if path is None:
        return make_synthetic(
            cfg.synthetic_users,
            cfg.synthetic_items,
            cfg.synthetic_length,
            seed,
            cfg.synthetic_pattern,
        )
    if cfg.dataset in BUILTIN:
        return read_atomic(path)
    return read_file(path, cfg)
