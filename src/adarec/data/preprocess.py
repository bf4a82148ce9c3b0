"""From raw interactions to chronological item sequences, with a content-keyed cache.

Steps: dropping rows without a user or item id, optional implicit threshold on ratings,
dropping exact duplicate rows, k-core filter, dropping sequences too short for leave-one-out,
a stable chronological sort, item ids 1..N, and sampled negatives.

A data file (CSV/TSV, RecBole ``.inter``, the paper's formats, Parquet files or folders) is
prepared out of core by ``adarec.data.columnar`` (DuckDB). ``build_in_memory`` is the
reference it is tested against: it prepares synthetic data, and a file whose records or
values the engine refuses (its reader then names the line at fault).

The cache is a folder of columns (``items.npy``: every sequence concatenated; ``offsets.npy``;
``negatives.npy``; ``meta.json`` with the ids) that every process memory-maps: ranks share
one copy of the log in the page cache, and each reads its own shard (``PreparedData.shard``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from adarec.config import DataConfig
from adarec.data import columnar
from adarec.data.builtin import BUILTIN, dataset_path, parquet_files
from adarec.data.interactions import Interactions
from adarec.data.readers import read_any
from adarec.data.synthetic import SYNTHETIC_VERSION
from adarec.errors import UserError
from adarec.io import writable_dir

PAD = "<pad>"
MIN_SEQUENCE_LENGTH = columnar.MIN_SEQUENCE_LENGTH
CACHE_VERSION = 3  # bump when the preprocessing or the cache layout changes


class Sequences(Sequence[np.ndarray]):
    """Per-user item sequences as views into one flat int64 array (memory-mapped from the
    cache): user ``u`` is ``items[offsets[u]:ends[u]]`` (``ends``: ``offsets[1:]``, the
    whole sequence; earlier ends give each user's prefix, as an evaluation split's
    histories); nothing is copied."""

    def __init__(
        self, items: np.ndarray, offsets: np.ndarray, ends: np.ndarray | None = None
    ) -> None:
        self.items = items
        self.offsets = offsets
        self.ends = offsets[1:] if ends is None else ends

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"sequence {index} out of range ({len(self)} users)")
        index %= len(self)
        return self.items[self.offsets[index] : self.ends[index]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for start, end in zip(self.offsets[:-1], self.ends, strict=True):
            yield self.items[start:end]


@dataclass
class PreparedData:
    """Chronological item sequences with internal item ids 1..N (0 is padding)."""

    name: str
    item_ids: list[str]  # raw id of internal item i at index i; index 0 is "<pad>"
    user_ids: list[str]  # raw user (or session) id of each sequence
    # int64 internal ids per user, oldest first, full length: a list, or (from the cache)
    # ``Sequences``, views of the memory-mapped columns.
    sequences: Sequence[np.ndarray]
    negatives: np.ndarray  # [num_users, num_negatives] int64, items each user never touched
    filter_log: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_interactions(self) -> int:
        return int(self.lengths().sum())

    def lengths(self) -> np.ndarray:
        """[num_users] int64 sequence lengths."""
        if isinstance(self.sequences, Sequences):
            return np.diff(self.sequences.offsets)
        return np.array([len(seq) for seq in self.sequences], dtype=np.int64)

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """Every sequence concatenated (int64) and the [num_users + 1] offsets into it."""
        if isinstance(self.sequences, Sequences):
            offsets = self.sequences.offsets
            return self.sequences.items[offsets[0] : offsets[-1]], offsets - offsets[0]
        offsets = np.zeros(self.num_users + 1, dtype=np.int64)
        np.cumsum(self.lengths(), out=offsets[1:])
        items = [np.asarray(seq, dtype=np.int64) for seq in self.sequences]
        return (np.concatenate(items) if items else np.zeros(0, np.int64)), offsets

    def fingerprint(self) -> str:
        """A hash of everything a model trains and is evaluated on: ids, sequences, negatives.

        Equal fingerprints mean equal splits; a re-ordered or edited file that changes any
        sequence, the item numbering or the negatives changes it.
        """
        digest = hashlib.sha256()
        digest.update(json.dumps([self.item_ids, self.user_ids]).encode())
        digest.update(self.lengths().astype(np.int64).tobytes())
        items, _ = self.columns()
        step = 1 << 22  # the concatenated sequences hash as the sequences one by one
        for start in range(0, len(items), step):
            digest.update(np.ascontiguousarray(items[start : start + step], np.int64).tobytes())
        digest.update(np.ascontiguousarray(self.negatives, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def shard(self, rank: int, world: int) -> PreparedData:
        """Rank ``rank``'s part of ``world``: a contiguous run of users holding about
        1/world of the interactions, as views of the same columns (ranks' shards are
        disjoint and cover every user; no rank copies the log)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        items, offsets = self.columns()
        targets = offsets[-1] * np.arange(world + 1) // world
        bounds = np.searchsorted(offsets, targets, side="left")
        bounds[0], bounds[-1] = 0, self.num_users
        first, last = int(bounds[rank]), int(bounds[rank + 1])
        return PreparedData(
            name=self.name,
            item_ids=self.item_ids,
            user_ids=self.user_ids[first:last],
            sequences=Sequences(items, offsets[first : last + 1]),
            negatives=self.negatives[first:last],
            filter_log=self.filter_log,
            options=self.options,
        )

    def item_index(self) -> dict[str, int]:
        """Raw item id -> internal id."""
        return {raw: index for index, raw in enumerate(self.item_ids) if index > 0}


def _encode(values: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Integer codes in order of first appearance, and the distinct values in that order."""
    index: dict[Any, int] = {}
    codes = np.fromiter(
        (index.setdefault(value, len(index)) for value in values), np.int64, len(values)
    )
    return codes, list(index)


def _frequent(keys: np.ndarray, min_count: int) -> np.ndarray:
    """Mask of the rows whose key occurs at least ``min_count`` times."""
    if len(keys) == 0:
        return np.ones(0, dtype=bool)
    return np.bincount(keys)[keys] >= min_count


def kcore(
    users: np.ndarray, items: np.ndarray, min_user: int, min_item: int, mode: str
) -> tuple[np.ndarray, int]:
    """Indices of the rows that survive the k-core filter, and the number of passes.

    ``iterative`` repeats until every kept user and item has enough rows; ``single`` (the
    paper's preprocessing) makes one pass: items by their count, then users by their count
    among the rows left.
    """
    keep = np.arange(len(users))
    if mode == "single":
        keep = keep[_frequent(items[keep], min_item)]
        return keep[_frequent(users[keep], min_user)], 1
    passes = 0
    while True:
        passes += 1
        ok = _frequent(users[keep], min_user) & _frequent(items[keep], min_item)
        if ok.all():
            return keep, passes
        keep = keep[ok]


def _blank(names: list[Any]) -> np.ndarray:
    """Per distinct id: whether it is empty or only white space (a missing id)."""
    return np.array([not str(name).strip() for name in names], dtype=bool)


def exact_duplicates(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Mask of the rows that repeat an earlier row's (user, item, timestamp)."""
    order = np.lexsort((np.arange(len(users)), timestamps, items, users))
    same = (
        (np.diff(users[order]) == 0)
        & (np.diff(items[order]) == 0)
        & (np.diff(timestamps[order]) == 0)
    )
    repeated = np.zeros(len(users), dtype=bool)
    repeated[order[1:]] = same
    return repeated


def _sizes(users: np.ndarray, items: np.ndarray) -> tuple[int, int, int]:
    """Rows, distinct users and distinct items (codes are small non-negative integers)."""
    return len(users), _distinct(users), _distinct(items)


def _distinct(codes: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(codes))) if len(codes) else 0


def _log_step(
    name: str, before: tuple[int, int, int], after: tuple[int, int, int], **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"step": name}
    for key, b, a in zip(("rows", "users", "items"), before, after, strict=True):
        entry[f"{key}_before"] = int(b)
        entry[f"{key}_after"] = int(a)
    return {**entry, **extra}


def sample_negatives(
    sequences: list[np.ndarray], num_items: int, num_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """For each user, ``num_negatives`` distinct items drawn uniformly from those never touched.

    A user who touched so many items that fewer than ``num_negatives`` remain gets all of
    them, repeated (in a random order) to fill the row; a user who touched every item gets
    a row of 0 (padding), which consumers must treat as "no negative".
    """
    negatives = np.zeros((len(sequences), num_negatives), dtype=np.int64)
    for row, seq in enumerate(sequences):
        unseen = np.ones(num_items + 1, dtype=bool)
        unseen[0] = False
        unseen[seq] = False
        pool = np.flatnonzero(unseen)
        if len(pool) >= num_negatives:
            negatives[row] = rng.choice(pool, num_negatives, replace=False)
        elif len(pool):
            negatives[row] = np.resize(rng.permutation(pool), num_negatives)
    return negatives


def build_in_memory(
    raw: Interactions, cfg: DataConfig, seed: int, name: str, say: Callable[[str], None]
) -> PreparedData:
    """The reference preparation of interactions held in memory (row by row, NumPy)."""
    say(f"read {len(raw):,} interactions")
    users, user_names = _encode(raw.users)
    items, item_names = _encode(raw.items)
    log: list[dict[str, Any]] = []

    def step(
        label: str, rows: np.ndarray, keep: np.ndarray, always: bool = True, **extra: Any
    ) -> np.ndarray:
        """Keep ``rows[keep]`` and log the sizes before and after (``always``, or when the
        step removed rows)."""
        kept = rows[keep]
        if always or len(kept) < len(rows):
            before, after = _sizes(users[rows], items[rows]), _sizes(users[kept], items[kept])
            log.append(_log_step(label, before, after, **extra))
            say(f"{label}: {len(rows) - len(kept):,} rows removed")
        return kept

    rows = np.arange(len(raw))
    # An empty id would become a user (merging every such row into one sequence) or an item.
    identified = ~_blank(user_names)[users] & ~_blank(item_names)[items]
    rows = step("rows without a user or item id dropped", rows, identified, always=False)
    if cfg.rating_threshold is not None:
        if raw.ratings is None:
            raise UserError(
                f"data.rating_threshold is {cfg.rating_threshold} but dataset "
                f"'{cfg.dataset}' has no ratings; set data.rating_threshold to null"
            )
        above = raw.ratings >= cfg.rating_threshold
        rows = step(f"rating >= {cfg.rating_threshold:g}", rows, above[rows])
    if cfg.duplicates == "drop":
        repeated = exact_duplicates(users[rows], items[rows], raw.timestamps[rows])
        rows = step(
            "exact duplicates (user, item, timestamp) dropped", rows, ~repeated, always=False
        )
    keep, passes = kcore(
        users[rows], items[rows], cfg.min_user_count, cfg.min_item_count, cfg.kcore
    )
    label = f"{cfg.kcore} k-core (users >= {cfg.min_user_count}, items >= {cfg.min_item_count})"
    rows = step(label, rows, keep, passes=passes)
    long_enough = _frequent(users[rows], MIN_SEQUENCE_LENGTH)
    rows = step(f"sequences >= {MIN_SEQUENCE_LENGTH} items", rows, long_enough)
    if len(rows) == 0:
        emptied = next(entry["step"] for entry in log if entry["rows_after"] == 0)
        filters = ", ".join(entry["step"] for entry in log)
        raise UserError(
            f"dataset '{cfg.dataset}': no interactions left after filtering ({filters}); "
            f"the step '{emptied}' removed the last ones: lower data.min_user_count, "
            "data.min_item_count or data.rating_threshold"
        )

    # Stable order by (user, timestamp, file row): many rows share a user's timestamp.
    rows = rows[np.lexsort((rows, raw.timestamps[rows], users[rows]))]
    user_sorted, item_sorted = users[rows], items[rows]
    codes, first = np.unique(item_sorted, return_index=True)
    by_appearance = codes[np.argsort(first)]
    internal = np.zeros(len(item_names), dtype=np.int64)
    internal[by_appearance] = np.arange(1, len(by_appearance) + 1)
    starts = np.flatnonzero(np.diff(user_sorted)) + 1
    sequences = np.split(internal[item_sorted], starts)
    num_items = len(by_appearance)
    negatives = sample_negatives(
        sequences, num_items, cfg.num_negatives, np.random.default_rng(seed)
    )
    say(f"{len(sequences):,} users, {num_items:,} items, {len(rows):,} interactions")
    return PreparedData(
        name=name,
        item_ids=[PAD] + [str(item_names[c]) for c in by_appearance],
        user_ids=[str(user_names[user_sorted[s]]) for s in np.r_[0, starts]],
        sequences=sequences,
        negatives=negatives,
        filter_log=log,
        options={**asdict(cfg), "seed": seed},
    )


def default_cache_dir() -> Path:
    """``$ADAREC_CACHE_DIR``, else ``~/.cache/adarec``."""
    env = os.environ.get("ADAREC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adarec"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_sha256(path: Path) -> str:
    """A file's content hash; a folder's covers each Parquet file's name and content."""
    if not path.is_dir():
        return _file_sha256(path)
    files = parquet_files(path)
    listing = [[str(f.relative_to(path)), _file_sha256(f)] for f in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def cache_key(cfg: DataConfig, seed: int, path: Path | None) -> str:
    """Hash of the source (file content, or the synthetic parameters), every option and seed."""
    # The generator's version stands for the content of synthetic data.
    source = f"synthetic-{SYNTHETIC_VERSION}" if path is None else _source_sha256(path)
    payload = {"version": CACHE_VERSION, "source": source, "options": asdict(cfg), "seed": seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


META_FILE = "meta.json"  # written last: a folder without it is not a cache entry


def _write_meta(folder: Path, columns: columnar.Columns, name: str, options: dict) -> None:
    np.save(folder / "offsets.npy", columns.offsets)
    meta = {
        "name": name,
        "filter_log": columns.filter_log,
        "options": options,
        "item_ids": columns.item_ids,
        "user_ids": columns.user_ids,
    }
    (folder / META_FILE).write_text(json.dumps(meta))


def _write_in_memory(folder: Path, data: PreparedData) -> None:
    """The cache columns of data prepared in memory."""
    items, offsets = data.columns()
    np.save(folder / "items.npy", items)
    np.save(folder / "negatives.npy", np.ascontiguousarray(data.negatives, dtype=np.int64))
    columns = columnar.Columns(data.item_ids[1:], data.user_ids, offsets, data.filter_log)
    _write_meta(folder, columns, data.name, data.options)


def _load(folder: Path) -> PreparedData:
    """Prepared data from a cache folder, its columns memory-mapped."""
    meta = json.loads((folder / META_FILE).read_text())
    offsets = np.load(folder / "offsets.npy")
    # Copy-on-write maps: pages are shared by every process until one writes (none does;
    # read-only arrays would make torch warn on every tensor made from them).
    items = np.load(folder / "items.npy", mmap_mode="c")
    negatives = np.load(folder / "negatives.npy", mmap_mode="c")
    users = len(offsets) - 1
    if len(items) != offsets[-1] or len(negatives) != users or len(meta["user_ids"]) != users:
        raise ValueError(f"{folder}: columns of different lengths")
    return PreparedData(
        name=meta["name"],
        item_ids=[PAD, *meta["item_ids"]],
        user_ids=meta["user_ids"],
        sequences=Sequences(np.asarray(items), offsets),
        negatives=np.asarray(negatives),
        filter_log=meta["filter_log"],
        options=meta["options"],
    )


def _build(
    cfg: DataConfig,
    seed: int,
    name: str,
    path: Path | None,
    folder: Path,
    say: Callable[[str], None],
) -> None:
    """Prepare ``cfg.dataset`` into the cache columns in ``folder``."""
    options = {**asdict(cfg), "seed": seed}
    if path is not None:
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=folder.parent))
        try:
            columns = columnar.build(path, cfg, seed, work, folder, say)
        except columnar.RowReaderNeeded as exc:
            say(f"{exc}; reading {path} row by row")
        else:
            _write_meta(folder, columns, name, options)
            return
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for stale in folder.iterdir():
            stale.unlink()
    # Synthetic data is made in memory; a file the engine refused is read by the row reader
    # (which names the line at fault, or reads what the engine does not).
    data = build_in_memory(read_any(cfg, seed), cfg, seed, name, say)
    data.options = options
    _write_in_memory(folder, data)


def _build_atomically(
    cfg: DataConfig, seed: int, name: str, path: Path | None, target: Path, say: Callable
) -> None:
    """Build into a temporary folder beside ``target`` and rename it: an interrupted or
    failed run leaves no cache entry. Another process that finished first wins."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        _build(cfg, seed, name, path, tmp, say)
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and not (target / META_FILE).is_file():
            raise UserError(f"cannot write {target}: {exc.strerror or exc}") from None
        if not isinstance(exc, OSError):
            raise


def prepare(
    cfg: DataConfig, seed: int, cache_dir: Path | None = None, progress: bool = False
) -> PreparedData:
    """Read, filter, order and index ``cfg.dataset``; load it from the cache when it is there.

    The cache folder is named by a hash of the source content, every data option and the
    seed, and is written atomically, so an interrupted or failed run leaves no cache.
    """
    started = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[data {time.perf_counter() - started:5.1f}s] {message}", file=sys.stderr)

    path = dataset_path(cfg.dataset)
    name = cfg.dataset if path is None or cfg.dataset in BUILTIN else path.stem
    key = cache_key(cfg, seed, path)
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    cache_root = Path(cache_dir or default_cache_dir())
    target = cache_root / f"{safe_name}-{key[:24]}"
    if target.exists():
        try:
            data = _load(target)
        except (OSError, ValueError, KeyError, TypeError):
            say(f"unreadable cache {target}; rebuilding it")
            shutil.rmtree(target, ignore_errors=True)
            if target.exists():  # a file in the way
                target.unlink()
        else:
            say(f"loaded {target}")
            return data
    # Found out now rather than after minutes of preprocessing.
    writable_dir(cache_root, "data cache folder ($ADAREC_CACHE_DIR)")
    _build_atomically(cfg, seed, name, path, target, say)
    say(f"cached {target}")
    return _load(target)
