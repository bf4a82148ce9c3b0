"""The running service end to end: ``POST /events`` and ``POST /recommend`` over loopback HTTP.

Usage:
    python benchmarks/service.py RUN_DIR [--backend compiled] [--stores memory redis]
        [--concurrency 1 8] [--workers 1] [--seconds 5] [--requests 20000] [--users 64]
        [--out benchmarks/results/service.json]

For each store (the in-process ``memory`` store, or a ``redis-server`` started here on
loopback), ``adarec serve RUN_DIR --backend B --state STORE --workers N`` runs in a
subprocess, pinned with its Redis to the first ``--workers`` cores where the machine has
more (the client gets the rest); then, at each concurrency, at most ``--requests``
requests or ``--seconds`` seconds, whichever ends first, of
  events     ``POST /events`` of ``--users`` users (random items of the run), the events of
             a few users interleaved so that concurrent events of one user are in flight
             together; at the end every user's stored event count must equal the events
             sent (``counts_match``: no lost update);
  recommend  ``POST /recommend`` with one random history of 1..max_len items.
Reported: requests/s, requests/s per server core (divided by the cores the server and its
Redis were pinned to, or by all cores when not pinned), p50/p99 ms, errors. Traffic goes to
127.0.0.1 only and every loop is bounded. The result is merged into the output JSON under
DATASET.MODEL.workersN, with the machine, torch version, date and load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadtest import Connection, make_histories, start_server, stop_server  # noqa: E402
from streaming import interleave, start_redis  # noqa: E402

from adarec.evaluate.latency import machine_description  # noqa: E402
from adarec.serve.bench import merge_results  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "service.json"
K = 10
WARMUP = 200  # requests per kind before the clock starts


def summary(latencies: list[float], errors: int, elapsed: float, cores: int) -> dict[str, Any]:
    """Throughput (total and per server core) and latency percentiles in ms."""
    rate = len(latencies) / elapsed if elapsed > 0 else 0.0
    return {
        "requests": len(latencies) + errors,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "per_s": round(rate, 1),
        "per_s_per_server_core": round(rate / cores, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
            "p99": round(float(np.percentile(latencies, 99)), 3) if latencies else None,
        },
    }


async def drive(
    connections: list[Connection], requests: list[tuple[str, dict[str, Any]]], seconds: float
) -> tuple[list[float], int, float, list[int]]:
    """Send ``requests`` from every connection until done or ``seconds`` pass: latencies
    (ms), errors, elapsed seconds and the indices of the requests answered 200."""
    latencies: list[float] = []
    answered: list[int] = []
    errors, next_index = 0, 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(connection: Connection) -> None:
        nonlocal next_index, errors
        while next_index < len(requests) and time.perf_counter() < deadline:
            index = next_index
            next_index += 1
            path, payload = requests[index]
            began = time.perf_counter()
            status = await connection.post(path, payload)
            if status == 200:
                latencies.append((time.perf_counter() - began) * 1000.0)
                answered.append(index)
            else:
                errors += 1

    await asyncio.gather(*(worker(c) for c in connections))
    return latencies, errors, time.perf_counter() - start, answered


async def measure(
    url: str, items: list[str], max_len: int, args: argparse.Namespace, label: str, cores: int
) -> dict[str, Any]:
    """Events then recommend at each concurrency against the server at ``url``."""
    rng = random.Random(args.seed)
    out: dict[str, Any] = {}
    for concurrency in args.concurrency:
        users = [f"{label}-c{concurrency}-{u}" for u in range(args.users)]
        per_user = max(1, args.requests // args.users)
        streams = [[rng.choice(items[1:]) for _ in range(per_user + 1)] for _ in users]
        connections = [await Connection.open(url) for _ in range(concurrency)]
        try:
            for u, user in enumerate(users):  # each user's first event creates its state
                await connections[0].post(f"/users/{user}/reset", {})
                body = {"user": user, "item": streams[u][0], "history": [], "k": K}
                assert await connections[0].post("/events", body) == 200
            for t in range(WARMUP):
                body = {"user": users[t % len(users)], "item": streams[0][0], "k": K}
                await connections[0].post("/events", body)
            warmed = WARMUP
            events = [
                ("/events", {"user": users[u], "item": item, "k": K})
                for u, item in interleave([s[1:] for s in streams], max(1, concurrency // 2))
            ]
            latencies, errors, elapsed, answered = await drive(connections, events, args.seconds)
            out[f"events_c{concurrency}"] = summary(latencies, errors, elapsed, cores)
            sent = [1] * len(users)
            for t in range(warmed):
                sent[t % len(users)] += 1
            for index in answered:
                sent[users.index(events[index][1]["user"])] += 1
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                counts = [(await http.get(f"/users/{user}")).json()["events"] for user in users]
            out[f"events_c{concurrency}"]["counts_match"] = counts == sent

            histories = make_histories(items, max_len, args.requests + WARMUP, args.seed)
            asks = [("/recommend", {"history": h, "k": K}) for h in histories]
            for path, payload in asks[:WARMUP]:
                await connections[0].post(path, payload)
            latencies, errors, elapsed, _ = await drive(connections, asks[WARMUP:], args.seconds)
            out[f"recommend_c{concurrency}"] = summary(latencies, errors, elapsed, cores)
        finally:
            for connection in connections:
                connection.close()
        for kind in ("events", "recommend"):
            row = out[f"{kind}_c{concurrency}"]
            lat = row["latency_ms"]
            print(
                f"{label:<8} {kind:<9} c{concurrency}: {row['per_s']:>8.1f}/s "
                f"({row['per_s_per_server_core']:.1f}/s per server core)  p50 {lat['p50']} ms  "
                f"p99 {lat['p99']} ms  errors {row['errors']}"
                + (f"  counts match: {row['counts_match']}" if kind == "events" else ""),
                flush=True,
            )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run that streams (a student or SASRec)")
    parser.add_argument(
        "--backend", default="compiled", choices=("compiled", "eager"), help="the model step"
    )
    parser.add_argument("--stores", nargs="+", default=["memory", "redis"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--workers", type=int, default=1, help="server processes (redis only)")
    parser.add_argument("--seconds", type=float, default=5.0, help="at most this long per cell")
    parser.add_argument("--requests", type=int, default=20_000, help="at most this many per cell")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.workers < 1 or args.requests < 1 or args.seconds <= 0:
        parser.error("--concurrency, --workers and --requests must be >= 1, --seconds > 0")
    if args.workers > 1 and "memory" in args.stores:
        parser.error("--workers > 1 needs the Redis store: --stores redis")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = args.pin and len(cpus) > args.workers
    server_cpus = set(cpus[: args.workers]) if pinned else None
    if pinned:
        os.sched_setaffinity(0, set(cpus[args.workers :]))
    cores = args.workers if pinned else (os.cpu_count() or 1)
    items = json.loads((args.run_dir / "items.json").read_text())
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    info: dict[str, Any] = {}
    redis = None
    workers = ("--workers", str(args.workers)) if args.workers > 1 else ()
    with tempfile.TemporaryDirectory(prefix="adarec-service-") as tmp:
        try:
            for store in args.stores:
                if store == "redis" and redis is None:
                    redis, redis_url = start_redis(server_cpus)
                spec = redis_url if store == "redis" else "memory"
                server = start_server(
                    args.run_dir,
                    args.backend,
                    1,
                    Path(tmp) / f"{store}.log",
                    server_cpus,
                    ("--state", spec, *workers),
                )
                try:
                    info = httpx.get(f"{server.url}/model", timeout=10).json()
                    results[store] = asyncio.run(
                        measure(server.url, items, info["max_len"], args, store, cores)
                    )
                finally:
                    stop_server(server)
        finally:
            if redis is not None:
                redis.terminate()
                redis.wait(timeout=10)
    summary_json = {
        "machine": machine_description(),
        "torch": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "command": "python benchmarks/service.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "cores": {"server": sorted(server_cpus), "client": sorted(set(cpus) - server_cpus)}
        if server_cpus
        else None,
        "settings": {
            key: getattr(args, key)
            for key in (
                "backend",
                "stores",
                "concurrency",
                "workers",
                "seconds",
                "requests",
                "users",
                "seed",
            )
        },
        "model": {key: info.get(key) for key in ("model", "kind", "dataset", "params", "max_len")},
        "results": results,
    }
    keys = (
        str(info.get("dataset")),
        str(info.get("model")),
        f"{args.backend}_workers{args.workers}",
    )
    merge_results(args.out, keys, summary_json)
    print(f"merged into {args.out} (key {'.'.join(keys)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
