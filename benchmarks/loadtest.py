"""HTTP load test: throughput and latency of ``adarec serve`` for a teacher and a student.

Usage:
    python benchmarks/loadtest.py TEACHER_RUN STUDENT_RUN [RUN ...] [--backend eager]
        [--concurrency 8] [--requests 2000] [--seconds 30] [--threads 1]
        [--out benchmarks/results/serving.json]

Each run is served the same way, one after the other (so they never compete for the CPU):
``adarec serve`` in a subprocess on a free loopback port, a short warm-up, then at most
``--requests`` single-history requests or ``--seconds`` seconds, whichever ends first, from
``--concurrency`` concurrent clients; then the server is stopped with SIGINT. Histories are
random (seeded) sequences of the run's own item ids, identical for every run of a dataset.
Where the OS allows it and there are enough cores, the server is pinned to ``--threads``
cores and this client to the others, so the load generator never steals the server's CPU
(on a 2-core machine: one core each). The result is merged into the output JSON under the
key DATASET.loadtest.BACKEND_cCONCURRENCY.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np

from adarec.evaluate.latency import machine_description
from adarec.serve.bench import merge_results

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serving.json"
SERVE = [sys.executable, "-m", "adarec", "serve"]  # the installed CLI, run by this Python
START_TIMEOUT_S = 120
WARMUP_REQUESTS = 20


@dataclass
class Server:
    process: subprocess.Popen
    log: IO[str]
    url: str = ""


def split_cpus(threads: int) -> tuple[set[int], set[int]] | None:
    """(server cores, client cores), or None where cores cannot be pinned or are too few."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    server = max(threads, 1)
    if len(cpus) <= server:
        return None
    return set(cpus[:server]), set(cpus[server:])


def start_server(
    run_dir: Path,
    backend: str,
    threads: int,
    log: Path,
    cpus: set[int] | None = None,
    extra: tuple[str, ...] = (),
) -> Server:
    """``adarec serve`` on a free 127.0.0.1 port (on ``cpus``), once it answers ``/health``.

    ``extra``: more ``serve`` options (e.g. ``--state redis://...``).
    """
    argv = SERVE + [
        str(run_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--backend",
        backend,
        "--threads",
        str(threads),
        "--no-access-log",
        *extra,
    ]
    handle = open(log, "w")  # noqa: SIM115 - the server writes to it until stop_server
    # Pinned before exec, so every thread the server starts inherits the cores.
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, preexec_fn=pin)
    server = Server(process, handle)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            handle.close()
            raise RuntimeError(f"server for {run_dir} exited:\n{log.read_text()}")
        for line in log.read_text().splitlines():
            if line.startswith("serving ") and " on http://" in line:
                server.url = line.split(" on ")[1].split(";")[0]
        if server.url:
            try:
                if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server for {run_dir} did not start in {START_TIMEOUT_S} s")


def stop_server(server: Server) -> int:
    """SIGINT (graceful shutdown), then kill if it does not exit; returns the exit code."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    server.log.close()
    return process.returncode


def make_histories(item_ids: list[str], max_len: int, count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    catalogue = item_ids[1:]
    return [rng.choices(catalogue, k=rng.randint(1, max_len)) for _ in range(count)]


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP to POST JSON.

    A deliberately minimal client: httpx spent ~3 ms of client CPU per request here, more
    than the server's whole answer for a student, and that time would have been counted as
    the server's latency.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        return cls(*await asyncio.open_connection(host.strip("[]"), int(port)))

    async def post(self, path: str, payload: dict[str, Any]) -> int:
        """The response status; the body is read and dropped."""
        body = json.dumps(payload).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: loadtest\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        fields = (line.split(":", 1) for line in head[1:] if ":" in line)
        headers = {name.strip().lower(): value.strip() for name, value in fields}
        await self.reader.readexactly(int(headers["content-length"]))
        return int(head[0].split()[1])

    def close(self) -> None:
        self.writer.close()


async def _load(
    url: str, histories: list[list[str]], concurrency: int, seconds: float, k: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    next_index = 0
    connections = [await Connection.open(url) for _ in range(concurrency)]
    for history in histories[:WARMUP_REQUESTS]:
        await connections[0].post("/recommend", {"history": history, "k": k})
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(slot: int) -> None:
        nonlocal next_index, errors
        while next_index < len(histories) and time.perf_counter() < deadline:
            history = histories[next_index]
            next_index += 1
            sent = time.perf_counter()
            try:
                status = await connections[slot].post("/recommend", {"history": history, "k": k})
                ok = status == 200
            except (OSError, asyncio.IncompleteReadError, KeyError, ValueError):
                ok = False  # a broken exchange: start this client over on a new connection
                connections[slot].close()
                connections[slot] = await Connection.open(url)
            if ok:
                latencies.append((time.perf_counter() - sent) * 1000.0)
            else:
                errors += 1

    try:
        await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    finally:
        for connection in connections:
            connection.close()
    elapsed = time.perf_counter() - start
    return {
        "requests": len(latencies) + errors,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
            "p99": round(float(np.percentile(latencies, 99)), 3) if latencies else None,
            "mean": round(statistics.fmean(latencies), 3) if latencies else None,
        },
    }


def load_test(
    run_dir: Path, args: argparse.Namespace, workdir: Path, cpus: set[int] | None
) -> dict[str, Any]:
    log = workdir / f"{run_dir.name}.log"
    server = start_server(run_dir, args.backend, args.threads, log, cpus)
    url = server.url
    try:
        info = httpx.get(f"{url}/model", timeout=10).json()
        items = json.loads((Path(run_dir) / "items.json").read_text())
        histories = make_histories(items, info["max_len"], args.requests, args.seed)
        stats = asyncio.run(_load(url, histories, args.concurrency, args.seconds, args.k))
    finally:
        exit_code = stop_server(server)
    return {
        "run_dir": str(run_dir),
        "model": info["model"],
        "kind": info["kind"],
        "dataset": info["dataset"],
        "params": info["params"],
        **stats,
        "server_exit_code": exit_code,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="e.g. a teacher and a student")
    parser.add_argument("--backend", default="eager", choices=("eager", "torchscript", "onnx"))
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=2000, help="at most this many requests")
    parser.add_argument("--seconds", type=float, default=30.0, help="at most this long")
    parser.add_argument("--threads", type=int, default=1, help="server CPU threads")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin server and client cores"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.seconds <= 0 or args.threads < 0:
        parser.error("--concurrency and --requests must be >= 1, --seconds > 0, --threads >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    split = split_cpus(args.threads) if args.pin else None
    if split:
        os.sched_setaffinity(0, split[1])
        print(f"server on cores {sorted(split[0])}, client on cores {sorted(split[1])}")
    results = []
    with tempfile.TemporaryDirectory(prefix="adarec-loadtest-") as tmp:
        for run_dir in args.run_dirs:
            result = load_test(run_dir, args, Path(tmp), split[0] if split else None)
            results.append(result)
            lat = result["latency_ms"]
            print(
                f"{result['model']:<12} {result['throughput_rps']:>9.1f} req/s  "
                f"p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
                f"({result['requests']} requests, {result['errors']} errors, "
                f"{result['seconds']} s)",
                flush=True,
            )
    base = results[0]["throughput_rps"]
    for result in results:
        result["throughput_vs_first"] = round(result["throughput_rps"] / base, 3) if base else None
    summary = {
        "machine": machine_description(),
        "cpu_count": os.cpu_count(),
        "settings": {
            key: getattr(args, key)
            for key in ("backend", "concurrency", "requests", "seconds", "threads", "k", "seed")
        },
        "cores": {"server": sorted(split[0]), "client": sorted(split[1])} if split else None,
        "request": "POST /recommend with one history (random, 1..max_len known items)",
        "runs": results,
    }
    keys = (results[0]["dataset"], "loadtest", f"{args.backend}_c{args.concurrency}")
    merge_results(args.out, keys, summary)
    print(f"merged into {args.out} (key {'.'.join(keys)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
