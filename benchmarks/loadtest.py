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
The result is merged into the output JSON under the key "loadtest".
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

from adarec.serve.bench import merge_results
from adarec.serve.latency import machine_description

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serving.json"
SERVE = [sys.executable, "-m", "adarec", "serve"]  # the installed CLI, run by this Python
START_TIMEOUT_S = 120
WARMUP_REQUESTS = 20


@dataclass
class Server:
    process: subprocess.Popen
    log: IO[str]
    url: str = ""


def start_server(run_dir: Path, backend: str, threads: int, log: Path) -> Server:
    """``adarec serve`` on a free 127.0.0.1 port, once it answers ``/health``."""
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
    ]
    handle = open(log, "w")  # noqa: SIM115 - the server writes to it until stop_server
    server = Server(subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT), handle)
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


async def _load(
    url: str, histories: list[list[str]], concurrency: int, seconds: float, k: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        for history in histories[:WARMUP_REQUESTS]:
            await client.post("/recommend", json={"history": history, "k": k})
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal next_index, errors
            while next_index < len(histories) and time.perf_counter() < deadline:
                history = histories[next_index]
                next_index += 1
                sent = time.perf_counter()
                try:
                    response = await client.post("/recommend", json={"history": history, "k": k})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - sent) * 1000.0)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
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


def load_test(run_dir: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = start_server(run_dir, args.backend, args.threads, workdir / f"{run_dir.name}.log")
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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.seconds <= 0 or args.threads < 0:
        parser.error("--concurrency and --requests must be >= 1, --seconds > 0, --threads >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="adarec-loadtest-") as tmp:
        for run_dir in args.run_dirs:
            result = load_test(run_dir, args, Path(tmp))
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
        "request": "POST /recommend with one history (random, 1..max_len known items)",
        "runs": results,
    }
    merge_results(args.out, "loadtest", summary)
    print(f"merged into {args.out} (key 'loadtest')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
