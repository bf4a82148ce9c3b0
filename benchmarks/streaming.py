"""Per-event (streaming) serving: full-window recompute vs incremental state, the floor, HTTP.

Usage:
    python benchmarks/streaming.py TEACHER_RUN [STUDENT_RUN] [--users 100] [--max-events 200]
        [--threads 1] [--http-seconds 10] [--catalogue-items 1000000]
        [--out benchmarks/results/streaming.json]

In process (same process, same threads, events interleaved so that other load hits every
variant alike): the real event streams of ``--users`` test users of the runs' dataset are
replayed from their first event, and for every event this measures, from the new item to
the top-10 ids,
  full         the served window (last max_len items) re-encoded: ``full_sort_predict``;
  incremental  ``Streamer.advance`` on the user's state, then the exact catalogue top-k;
  floor        the new item's embedding scored against the catalogue (a model with no body).
Every incremental answer is checked against the full one (max abs score difference).
State size is the Redis encoding (``encode_state``); users per GiB follow from it.

Over HTTP: ``adarec serve --state memory|redis://...`` per model, on its own core with the
client on the other (Redis on the server's core), ``POST /events`` at concurrency 1 and 8.
The events of a few users are interleaved so that concurrent requests of the same user are
in flight at once; at the end each user's stored event count must equal the events sent.

Catalogue: a synthetic catalogue of ``--catalogue-items`` vectors around 1,000 centres
(noise as large as the centres), queries between two centres: exact top-10 vs faiss IVF
(and HNSW at a tenth of the size): build time, latency, recall@10.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadtest import Connection, split_cpus, start_server, stop_server  # noqa: E402

from adarec.data.preprocess import prepare  # noqa: E402
from adarec.data.splits import left_pad  # noqa: E402
from adarec.evaluate.latency import machine_description  # noqa: E402
from adarec.runs import load_run_config  # noqa: E402
from adarec.serve.bench import merge_results  # noqa: E402
from adarec.serve.catalogue import ExactCatalogue, FaissCatalogue  # noqa: E402
from adarec.serve.predictor import Predictor  # noqa: E402
from adarec.serve.state_store import encode_state, model_tag  # noqa: E402
from adarec.serve.streaming import streamer_for  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "streaming.json"
K = 10
GIB = 1024**3


def summary(values_ns: list[int]) -> dict[str, float | int | None]:
    """Median, p99 and mean in ms (None for no values) and the count."""
    if not values_ns:
        return {"p50": None, "p99": None, "mean": None, "count": 0}
    ms = np.asarray(values_ns) / 1e6
    return {
        "p50": round(float(np.percentile(ms, 50)), 4),
        "p99": round(float(np.percentile(ms, 99)), 4),
        "mean": round(float(ms.mean()), 4),
        "count": len(values_ns),
    }


def event_streams(run_dir: Path, users: int, max_events: int, seed: int) -> list[np.ndarray]:
    """The full item sequences (internal ids) of ``users`` random users, first events first."""
    cfg = load_run_config(run_dir)
    data = prepare(cfg.data, cfg.seed)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(data.sequences), size=min(users, len(data.sequences)), replace=False)
    return [data.sequences[u][:max_events] for u in sorted(chosen)]


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators a call dispatches: at batch 1 on a CPU each costs a few
    microseconds whatever its size, so the count explains most of a small model's latency."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Any) -> int:
    with torch.inference_mode(), OpCounter() as counter:
        fn()
    return counter.count


def ops_per_event(predictor: Predictor, stream: np.ndarray) -> dict[str, int]:
    """ATen operators per event of each variant (one user's history, its next item)."""
    model = predictor.model
    streamer, catalogue = streamer_for(model), ExactCatalogue(model)
    item = int(stream[-1])
    within = streamer.rebuild(stream[: min(len(stream), model.max_len) - 1].tolist())
    past = streamer.rebuild(stream[:-1].tolist())
    window = torch.from_numpy(left_pad([stream], model.max_len))
    return {
        "full": count_ops(lambda: _top_k(model.full_sort_predict(window)[0])),
        "incremental_within": count_ops(
            lambda: catalogue.top_k(streamer.advance(within, item).output, K)
        ),
        "incremental_past": count_ops(
            lambda: catalogue.top_k(streamer.advance(past, item).output, K)
        ),
        "floor": count_ops(lambda: _top_k(model.output_layer(model.item_embedding.weight[item]))),
    }


def _top_k(scores: torch.Tensor) -> list[int]:
    scores[0] = float("-inf")
    return torch.topk(scores, K).indices.tolist()


def replay(predictor: Predictor, streams: list[np.ndarray]) -> dict[str, Any]:
    """Per-event latency of full recompute, incremental and floor over the same streams."""
    model = predictor.model
    streamer = streamer_for(model)
    catalogue = ExactCatalogue(model)
    tag = model_tag(model)
    embedding, head = model.item_embedding.weight, model.output_layer
    max_len = model.max_len
    times: dict[str, list[int]] = defaultdict(list)
    sizes_end, sizes_all, worst_diff = [], [], 0.0
    reencodes_before = streamer.reencodes
    clock = time.perf_counter_ns
    with torch.inference_mode():
        for stream in streams:
            state = streamer.init_state()
            for t, item in enumerate(stream.tolist()):
                phase = "within" if t < max_len else "past"
                start = clock()
                window = torch.from_numpy(left_pad([stream[: t + 1]], max_len))
                full_scores = model.full_sort_predict(window)[0]
                full_top = _top_k(full_scores.clone())
                middle = clock()
                state = streamer.advance(state, item)
                catalogue.top_k(state.output, K)
                end = clock()
                _top_k(head(embedding[item]))
                floor_end = clock()
                times["full"].append(middle - start)
                times["incremental"].append(end - middle)
                times[f"incremental_{phase}"].append(end - middle)
                times["floor"].append(floor_end - end)
                streamed = model.logits(state.output.unsqueeze(0))[0]
                worst_diff = max(worst_diff, (streamed - full_scores).abs().max().item())
                sizes_all.append(len(encode_state(state, tag)))
                del full_top
            sizes_end.append(len(encode_state(state, tag)))
    events = len(times["full"])
    longest = max(streams, key=len)
    mean_end = statistics.fmean(sizes_end)
    return {
        "model": predictor.info.get("model"),
        "architecture": predictor.info.get("architecture"),
        "max_len": max_len,
        "width": model.hidden_size,
        "num_items": model.num_items,
        "events": events,
        "events_past_max_len": len(times["incremental_past"]),
        "reencodes": streamer.reencodes - reencodes_before,
        "aten_ops_per_event": ops_per_event(predictor, longest),
        "max_abs_score_diff": worst_diff,
        "latency_ms": {name: summary(values) for name, values in times.items()},
        "state_bytes": {
            "mean_at_end": round(mean_end, 1),
            "max": max(sizes_all),
            "mean_over_events": round(statistics.fmean(sizes_all), 1),
        },
        "users_per_gib": {"at_end": int(GIB / mean_end), "worst_case": int(GIB / max(sizes_all))},
    }


# ---------------------------------------------------------------------------------- HTTP


def start_redis(cpus: set[int] | None) -> tuple[subprocess.Popen, str]:
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        preexec_fn=pin,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("redis-server did not start")


def interleave(streams: list[list[str]], group: int) -> list[tuple[int, str]]:
    """(user, item) events: users in groups of ``group``, round-robin within a group, so
    that concurrent clients send events of the same user at the same time."""
    events = []
    for first in range(0, len(streams), group):
        members = range(first, min(first + group, len(streams)))
        for t in range(max(len(streams[u]) for u in members)):
            events += [(u, streams[u][t]) for u in members if t < len(streams[u])]
    return events


async def _events_load(
    url: str, streams: list[list[str]], concurrency: int, seconds: float, prefix: str
) -> dict[str, Any]:
    users = [f"{prefix}-{u}" for u in range(len(streams))]
    connections = [await Connection.open(url) for _ in range(concurrency)]
    # Each user's first event, in order, before the clock starts (the state is created).
    for u, stream in enumerate(streams):
        await connections[0].post(f"/users/{users[u]}/reset", {})
        status = await connections[0].post(
            "/events", {"user": users[u], "item": stream[0], "history": [], "k": K}
        )
        assert status == 200, status
    events = interleave([s[1:] for s in streams], max(1, concurrency // 2))
    sent = [1] * len(streams)
    latencies: list[float] = []
    errors, next_index = 0, 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(slot: int) -> None:
        nonlocal next_index, errors
        while next_index < len(events) and time.perf_counter() < deadline:
            u, item = events[next_index]
            next_index += 1
            began = time.perf_counter()
            status = await connections[slot].post(
                "/events", {"user": users[u], "item": item, "k": K}
            )
            if status == 200:
                latencies.append((time.perf_counter() - began) * 1000)
                sent[u] += 1
            else:
                errors += 1

    try:
        await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    finally:
        for connection in connections:
            connection.close()
    elapsed = time.perf_counter() - start
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        counts = [(await http.get(f"/users/{user}")).json()["events"] for user in users]
    mismatched = sum(c != s for c, s in zip(counts, sent, strict=True))
    return {
        "events": len(latencies) + errors,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "events_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 3),
            "p99": round(float(np.percentile(latencies, 99)), 3),
        },
        "users": len(users),
        "users_with_count_mismatch": mismatched,
        "counts_match": mismatched == 0,
    }


def http_bench(
    runs: dict[str, Path], streams: list[list[str]], args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    split = split_cpus(args.threads) if args.pin else None
    if split:
        os.sched_setaffinity(0, split[1])
    server_cpus = split[0] if split else None
    redis, redis_url = start_redis(server_cpus)
    results: dict[str, Any] = {
        "cores": {"server": sorted(split[0]), "client": sorted(split[1])} if split else None
    }
    try:
        for name, run_dir in runs.items():
            for store in ("memory", "redis"):
                spec = redis_url if store == "redis" else "memory"
                log = workdir / f"{name}-{store}.log"
                server = start_server(
                    run_dir, "eager", args.threads, log, server_cpus, ("--state", spec)
                )
                try:
                    for concurrency in (1, 8):
                        stats = asyncio.run(
                            _events_load(
                                server.url,
                                streams,
                                concurrency,
                                args.http_seconds,
                                f"{name}-{store}-c{concurrency}",
                            )
                        )
                        results[f"{name}_{store}_c{concurrency}"] = stats
                        lat = stats["latency_ms"]
                        print(
                            f"http {name:<8} {store:<6} c{concurrency}: "
                            f"{stats['events_per_s']:>8.1f} events/s  p50 {lat['p50']} ms  "
                            f"p99 {lat['p99']} ms  counts match: {stats['counts_match']}",
                            flush=True,
                        )
                finally:
                    stop_server(server)
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        if split:
            os.sched_setaffinity(0, split[0] | split[1])
    return results


# ----------------------------------------------------------------------------- catalogue


def clustered(
    count: int, rng: np.random.Generator, centres: np.ndarray, mix: int = 1
) -> np.ndarray:
    """Vectors around the mean of ``mix`` random centres, with as much noise as signal."""
    picks = rng.integers(0, len(centres), (count, mix))
    noise = rng.normal(size=(count, centres.shape[1]))
    return (centres[picks].mean(axis=1) + noise).astype(np.float32)


def catalogue_bench(items: int, dim: int, queries: int, seed: int) -> dict[str, Any]:
    """Exact vs faiss top-10 on a synthetic clustered catalogue (inner product + bias)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim))
    weight = np.vstack([np.zeros((1, dim), np.float32), clustered(items, rng, centres)])
    bias = rng.normal(scale=0.1, size=items + 1).astype(np.float32)
    # A user's state mixes several tastes: queries sit between two centres.
    asks = clustered(queries, rng, centres, mix=2)
    out: dict[str, Any] = {"items": items, "dim": dim, "queries": queries, "kind": "synthetic"}
    for kind, count in (("ivf", items), ("hnsw", items // 10)):
        w, b = torch.from_numpy(weight[: count + 1]), torch.from_numpy(bias[: count + 1])
        exact_ns, exact_top = [], []
        for query in torch.from_numpy(asks):
            began = time.perf_counter_ns()
            scores = torch.addmv(b, w, query)
            scores[0] = float("-inf")
            top = torch.topk(scores, K).indices
            exact_ns.append(time.perf_counter_ns() - began)
            exact_top.append(set(top.tolist()))
        built = time.perf_counter()
        index = FaissCatalogue(weight[: count + 1], bias[: count + 1], kind=kind)
        build_s = time.perf_counter() - built
        out[kind] = {
            "items": count,
            "build_seconds": round(build_s, 1),
            "exact_ms": summary(exact_ns),
            "settings": [_search(index, kind, value, asks, exact_top) for value in SWEEP[kind]],
        }
        for row in out[kind]["settings"]:
            print(
                f"catalogue {count:>8} items: exact p50 {out[kind]['exact_ms']['p50']} ms | "
                f"{kind} {row['setting']} p50 {row['faiss_ms']['p50']} ms, recall@10 "
                f"{row['recall_at_10']} (built in {build_s:.1f} s)",
                flush=True,
            )
    return out


# The search-time knob of each index: IVF lists probed (of sqrt(items)), HNSW candidates.
SWEEP = {"ivf": (16, 64, 128), "hnsw": (64, 128, 256)}


def _search(
    index: FaissCatalogue, kind: str, value: int, asks: np.ndarray, exact_top: list[set[int]]
) -> dict[str, Any]:
    """Latency and recall@10 (against the exact top-10) at one search setting."""
    if kind == "ivf":
        index.index.nprobe = value
        setting = {"nlist": index.index.nlist, "nprobe": value}
    else:
        index.index.hnsw.efSearch = value
        setting = {"M": 32, "efConstruction": 80, "efSearch": value}
    faiss_ns, hits = [], 0
    for query, expected in zip(asks, exact_top, strict=True):
        began = time.perf_counter_ns()
        _, ids = index.search(query[None], K)
        faiss_ns.append(time.perf_counter_ns() - began)
        hits += len(set(ids[0].tolist()) & expected)
    return {
        "setting": setting,
        "faiss_ms": summary(faiss_ns),
        "recall_at_10": round(hits / (K * len(asks)), 4),
    }


def check_targets(in_process: dict[str, Any]) -> dict[str, Any] | None:
    """The issue's targets: student incremental <= 2x floor and >= 5x below teacher full."""
    if "student" not in in_process:
        return None
    student, teacher = in_process["student"]["latency_ms"], in_process["teacher"]["latency_ms"]
    targets: dict[str, Any] = {}
    for phase in ("", "_within", "_past"):
        incremental = student[f"incremental{phase}"]["p50"]
        if incremental is None:
            continue
        targets[f"student_incremental{phase}_vs_floor"] = round(
            incremental / student["floor"]["p50"], 2
        )
        targets[f"teacher_full_vs_student_incremental{phase}"] = round(
            teacher["full"]["p50"] / incremental, 2
        )
    targets["met"] = (
        targets["student_incremental_vs_floor"] <= 2
        and targets["teacher_full_vs_student_incremental"] >= 5
    )
    return targets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", type=Path, help="the teacher's run directory")
    parser.add_argument(
        "student", type=Path, nargs="?", help="the student's run directory (optional)"
    )
    parser.add_argument("--users", type=int, default=100, help="test users replayed")
    parser.add_argument("--max-events", type=int, default=200, help="events per user at most")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and server's)")
    parser.add_argument("--http-seconds", type=float, default=10, help="0: skip HTTP")
    parser.add_argument("--catalogue-items", type=int, default=1_000_000, help="0: skip")
    parser.add_argument("--catalogue-queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    runs = {"teacher": args.teacher}
    if args.student is not None:
        runs["student"] = args.student
    predictors = {name: Predictor.from_run(path) for name, path in runs.items()}
    if any(p.item_ids != predictors["teacher"].item_ids for p in predictors.values()):
        raise SystemExit("the teacher and the student were trained on different items")
    streams = event_streams(args.teacher, args.users, args.max_events, args.seed)
    dataset = predictors["teacher"].info["dataset"]
    print(
        f"{dataset}: {len(streams)} users, {sum(map(len, streams))} events, "
        f"{args.threads} thread(s)",
        flush=True,
    )
    in_process = {name: replay(p, streams) for name, p in predictors.items()}
    for name, measured in in_process.items():
        lat = measured["latency_ms"]
        print(
            f"{name:<8} full p50 {lat['full']['p50']} p99 {lat['full']['p99']} | incremental "
            f"p50 {lat['incremental']['p50']} p99 {lat['incremental']['p99']} (within max_len "
            f"p50 {lat['incremental_within']['p50']}) | floor p50 {lat['floor']['p50']} ms | "
            f"state {measured['state_bytes']['mean_at_end']} B, "
            f"{measured['users_per_gib']['at_end']} users/GiB | max diff "
            f"{measured['max_abs_score_diff']:.2e}",
            flush=True,
        )
    targets = check_targets(in_process)
    print(f"targets (<= 2x floor, >= 5x below teacher full): {targets}", flush=True)
    result: dict[str, Any] = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine_description(),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "threads": args.threads,
        "runs": {name: str(path) for name, path in runs.items()},
        "in_process": in_process,
        "targets": targets,
    }
    if args.http_seconds > 0:
        raw = [[predictors["teacher"].item_ids[i] for i in s.tolist()] for s in streams]
        with tempfile.TemporaryDirectory(prefix="adarec-streaming-") as tmp:
            result["http"] = http_bench(runs, raw, args, Path(tmp))
    if args.catalogue_items > 0:
        width = in_process[list(runs)[-1]]["width"]  # the student's, when there is one
        result["catalogue"] = catalogue_bench(
            args.catalogue_items, width, args.catalogue_queries, args.seed
        )
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    merge_results(args.out, (dataset,), result)
    print(f"merged into {args.out} (key {dataset})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
