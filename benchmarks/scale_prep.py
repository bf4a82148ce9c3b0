"""``python benchmarks/scale.py --part prep``: data preparation at 1M to 50M interactions.

Each case is a synthetic log with real structure, written once under ``--work``:

- ``1M``, ``10M``, ``50M``: interactions of rows/50 users over rows/40 items; sequence
  lengths log-normal (sigma 1); the next item follows one of 4 item-to-item transitions of
  the previous item with probability 0.6, else a Zipf(1) draw from the catalogue;
  timestamps with 10% ties; the CSV (``user_id,item_id,timestamp``) in chronological order.
- ``retailrocket``: RetailRocket's ``events.csv`` layout and about its size (1.4M
  visitors, 235k items, views 96%, add-to-cart 2.6%, transactions 0.8%, ms timestamps;
  3.34M events: lengths drawn for 2.75M, then at least one per visitor), most visitors
  with one or two events (log-normal lengths, sigma 1.6); prepared with the
  ``retailrocket`` reader (views only) and the default 5-core.

``movielens``: ml-100k and ml-1m prepared by both engines under four option sets (the
defaults, rating >= 4, single k-core with duplicates kept, a denser core with 5 negatives),
seed 42: fingerprints and filter logs.

Every preparation runs in its own process (peak memory: ru_maxrss of that process, Python
and numpy included), the default data settings (5-core, 100 negatives): ``columnar`` is
``prepare`` (DuckDB; source hash, preparation, cache written and memory-mapped), ``rows``
is today's row reader and NumPy preparation (``read_file`` + ``build_in_memory``; no cache
written), run up to ``--reference-rows``. The ``10M`` case is also prepared from its Parquet
parts (a folder). Writes the "prep" key of benchmarks/results/scale.json and
benchmarks/results/scale_prep.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from adarec.config import DataConfig
from adarec.evaluate.latency import machine_description

ROWS = {"1M": 1_000_000, "10M": 10_000_000, "50M": 50_000_000}
RETAILROCKET = {"rows": 2_750_000, "users": 1_400_000, "items": 235_000}
CHUNK_ROWS = 2_000_000  # rows generated at a time
FOLLOW, SUCCESSORS, TIE = 0.6, 4, 0.1


def structured_chunks(
    rows: int, users: int, items: int, seed: int, sigma: float = 1.0, min_length: int = 2
):
    """Yield (users, items, seconds) arrays, whole users at a time: log-normal sequence
    lengths, Zipf(1) popularity, item-to-item transitions, per-user increasing times."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1)
    popularity = popularity[rng.permutation(items)] / popularity.sum()
    successors = rng.choice(items, (items, SUCCESSORS), p=popularity)
    weights = rng.lognormal(0.0, sigma, users)
    lengths = np.maximum(min_length, np.round(weights / weights.sum() * rows)).astype(np.int64)
    bounds = np.searchsorted(np.cumsum(lengths), np.arange(CHUNK_ROWS, lengths.sum(), CHUNK_ROWS))
    for first, last in zip(np.r_[0, bounds], np.r_[bounds, users], strict=True):
        if last <= first:
            continue
        length = lengths[first:last]
        starts = np.r_[0, np.cumsum(length)[:-1]]
        n = int(length.sum())
        seq = rng.choice(items, n, p=popularity)
        follow = rng.random(n) < FOLLOW
        pick = rng.integers(0, SUCCESSORS, n)
        order = np.argsort(-length, kind="stable")
        for t in range(1, int(length.max())):
            active = order[: np.searchsorted(-length[order], -t, side="left")]
            at = starts[active] + t
            at = at[follow[at]]
            seq[at] = successors[seq[at - 1], pick[at]]
        gaps = np.where(rng.random(n) < TIE, 0, rng.integers(1, 3600, n))
        gaps[starts] = rng.integers(0, 86_400 * 365, len(length))
        seconds = np.cumsum(gaps)
        seconds -= np.repeat(seconds[starts] - gaps[starts], length)
        yield np.repeat(np.arange(first, last), length), seq, 1_400_000_000 + seconds


def write_case(case: str, work: Path) -> tuple[Path, Path]:
    """The case's CSV (chronological) and its Parquet parts (a folder), made once."""
    csv_path, parts = work / f"{case}.csv", work / f"{case}-parquet"
    if csv_path.exists() and parts.exists():
        return csv_path, parts
    tmp = work / f".{case}-parts"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    con = duckdb.connect()
    con.execute("SET memory_limit = '3GB'")
    con.execute(f"SET temp_directory = '{work / '.spill'}'")
    if case == "retailrocket":
        chunks = structured_chunks(**RETAILROCKET, seed=28, sigma=1.6, min_length=1)
    else:
        rows = ROWS[case]
        chunks = structured_chunks(rows, rows // 50, rows // 40, seed=28)
    for k, (users, items, seconds) in enumerate(chunks):
        columns = {"u": users, "i": items, "t": seconds}  # noqa: F841 (read by DuckDB)
        if case == "retailrocket":
            kind = np.random.default_rng(k).random(len(users))
            columns["e"] = np.where(kind < 0.96, 0, np.where(kind < 0.986, 1, 2))
            select = (
                "SELECT t * 1000 AS timestamp, u AS visitorid, "
                "['view', 'addtocart', 'transaction'][e + 1] AS event, i AS itemid, "
                "CASE WHEN e = 2 THEN i END AS transactionid FROM columns"
            )
        else:
            select = "SELECT 'u' || u AS user_id, 'i' || i AS item_id, t AS timestamp FROM columns"
        con.execute(f"COPY ({select}) TO '{tmp / f'part-{k:04d}.parquet'}' (FORMAT parquet)")
    # A total order: timestamps tie (10% of gaps are 0), and a parallel sort orders ties
    # differently run to run, which changed the generated file (and its fingerprint).
    order = (
        "timestamp, visitorid, itemid, event"
        if case == "retailrocket"
        else "timestamp, user_id, item_id"
    )
    con.execute(
        f"COPY (SELECT * FROM read_parquet('{tmp}/*.parquet') ORDER BY {order}) "
        f"TO '{csv_path}' (HEADER, DELIMITER ',')"
    )
    tmp.rename(parts)
    return csv_path, parts


def case_config(case: str, path: Path) -> DataConfig:
    if case == "retailrocket":
        return DataConfig(dataset=str(path), format="retailrocket")
    return DataConfig(dataset=str(path), format="auto")


def one(engine: str, case: str, path: Path) -> dict[str, Any]:
    """Prepare in this process; seconds, CPU seconds, peak memory and the result's size."""
    from adarec.data.preprocess import build_in_memory, prepare
    from adarec.data.readers import read_file

    cfg = case_config(case, path)
    started, cpu = time.perf_counter(), time.process_time()
    if engine == "columnar":
        cache = Path(tempfile.mkdtemp(prefix="scale-cache-", dir=path.parent))
        try:
            data = prepare(cfg, 0, cache)
            seconds = time.perf_counter() - started
            fingerprint = data.fingerprint()
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    else:
        data = build_in_memory(read_file(path, cfg), cfg, 0, path.stem, lambda _: None)
        seconds = time.perf_counter() - started
        fingerprint = data.fingerprint()
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "interactions": data.num_interactions,
        "users": data.num_users,
        "items": data.num_items,
        "fingerprint": fingerprint[:16],
    }


def _run(engine: str, case: str, path: Path, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAREC_DATA_THREADS": str(threads)}
    command = [sys.executable, str(Path(__file__).with_name("scale.py")), "--part", "prep"]
    command += ["--one-prep", f"{engine}:{case}:{path}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    row: dict[str, Any] = {"case": case, "engine": engine, "input": path.name}
    if done.returncode != 0:
        row["failed"] = (done.stderr.strip().splitlines() or ["?"])[-1]
    else:
        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps(row), flush=True)
    return row


def plot(runs: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for engine, style in (("columnar", "o-"), ("rows", "s--")):
        done = [
            r
            for r in runs
            if r["engine"] == engine and r["case"] in ROWS and "seconds" in r
            and r["input"].endswith(".csv")
        ]  # fmt: skip
        done.sort(key=lambda r: ROWS[r["case"]])
        x = [ROWS[r["case"]] for r in done]
        label = "DuckDB (columnar)" if engine == "columnar" else "row reader (before)"
        left.plot(x, [r["seconds"] for r in done], style, label=label)
        right.plot(x, [r["peak_rss_gb"] for r in done], style, label=label)
    for r in runs:
        if r["case"] == "retailrocket" and "seconds" in r:
            marker = "^" if r["engine"] == "columnar" else "v"
            left.plot(
                [RETAILROCKET["rows"]],
                [r["seconds"]],
                marker,
                label=f"RetailRocket-sized, {r['engine']}",
            )
            right.plot([RETAILROCKET["rows"]], [r["peak_rss_gb"]], marker)
    for axis, title in ((left, "preparation seconds"), (right, "peak memory (GB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("interactions in the log")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
    left.axhline(600, color="grey", lw=0.8, ls=":")
    right.axhline(8, color="grey", lw=0.8, ls=":")
    left.legend(fontsize=8)
    fig.suptitle("adarec data preparation, 2-core CPU (shared machine)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# Option sets of the MovieLens equivalence check (the defaults first).
EQUIVALENCE_OPTIONS = [
    {},
    {"rating_threshold": 4.0},
    {"kcore": "single", "duplicates": "keep"},
    {"min_user_count": 20, "min_item_count": 10, "num_negatives": 5},
]


def equivalence() -> list[dict[str, Any]]:
    """ml-100k and ml-1m prepared both ways (seed 42): fingerprints and filter logs."""
    from adarec.data.builtin import builtin_path
    from adarec.data.preprocess import build_in_memory, prepare
    from adarec.data.readers import read_atomic

    rows = []
    for name in ("ml-100k", "ml-1m"):
        raw = read_atomic(builtin_path(name))
        for options in EQUIVALENCE_OPTIONS:
            cfg = DataConfig(dataset=name, **options)
            with tempfile.TemporaryDirectory() as cache:
                data = prepare(cfg, 42, Path(cache))
                expected = build_in_memory(raw, cfg, 42, name, lambda _: None)
                row = {
                    "dataset": name,
                    "options": options,
                    "columnar": data.fingerprint(),
                    "rows": expected.fingerprint(),
                    "same_filter_log": data.filter_log == expected.filter_log,
                }
            row["identical"] = row["columnar"] == row["rows"] and row["same_filter_log"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def write_key(results: Path, key: str, record: dict[str, Any]) -> None:
    """Replace one key of the results file, keeping the others (read-modify-write under
    the lock ``--part train`` takes too; the write itself is atomic)."""
    import fcntl

    from adarec.io import atomic_write_json

    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results.with_suffix(".json.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        content = json.loads(results.read_text()) if results.exists() else {}
        content[key] = record
        atomic_write_json(results, content)


def run(args: argparse.Namespace, results: Path) -> int:
    """Generate the cases, prepare each with both engines, write the "prep" key."""
    if args.one_prep:
        engine, case, path = args.one_prep.split(":", 2)
        print(json.dumps(one(engine, case, Path(path))))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cases = [case for case in args.rows.split(",") if case != "movielens"]
    same = equivalence() if "movielens" in args.rows.split(",") else None
    reference = set(args.reference_rows.split(",")) if args.reference_rows else set()
    runs: list[dict[str, Any]] = []
    for case in cases:
        started = time.perf_counter()
        csv_path, parts = write_case(case, work)
        print(f"{case}: data written in {time.perf_counter() - started:.0f} s", flush=True)
        runs.append(_run("columnar", case, csv_path, args.threads))
        if case == "10M":
            runs.append(_run("columnar", case, parts, args.threads))
        if case in reference:
            runs.append(_run("rows", case, csv_path, args.threads))
    previous = json.loads(results.read_text()).get("prep", {}) if results.exists() else {}
    # Cases not rerun this time keep their earlier measurement.
    rerun = {(r["case"], r["engine"], r["input"]) for r in runs}
    kept = [
        r for r in previous.get("runs", []) if (r["case"], r["engine"], r["input"]) not in rerun
    ]
    runs = kept + runs
    speedup: dict[str, dict[str, float]] = {"wall": {}, "cpu": {}}
    for case in ROWS:
        timed = {
            r["engine"]: r
            for r in runs
            if r["case"] == case and "seconds" in r and r["input"].endswith(".csv")
        }
        if {"columnar", "rows"} <= timed.keys():
            for kind, key in (("wall", "seconds"), ("cpu", "cpu_seconds")):
                ratio = timed["rows"][key] / timed["columnar"][key]
                speedup[kind][case] = round(ratio, 1)
    if same is None:
        same = previous.get("movielens_equivalence")
    # The runs kept from earlier invocations came from their commands: all are listed.
    command = " ".join(["python benchmarks/scale.py", *sys.argv[1:]])
    commands = [c for c in previous.get("commands", []) if c != command] + [command]
    write_key(
        results,
        "prep",
        {
            "runs": runs,
            "movielens_equivalence": same,
            "speedup_over_row_reader": speedup,
            "settings": "default data settings (iterative 5-core, exact duplicates dropped, "
            "100 sampled negatives per user, seed 0); columnar = prepare() with DuckDB "
            f"({args.threads} threads, memory limit ADAREC_DATA_MEMORY or 3GB): source hash, "
            "preparation, cache written and memory-mapped; rows = read_file + "
            "build_in_memory (the row reader before this change), no cache",
            "commands": commands,
            "machine": machine_description(),
            "machine_note": "2-core machine shared with other engineers' jobs (tests and "
            "benchmarks) while measured: seconds are upper bounds of a quiet machine's",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    plot(runs, results.with_name("scale_prep.png"))
    print(f"wrote the 'prep' key of {results} and {results.with_name('scale_prep.png')}")
    return 0
