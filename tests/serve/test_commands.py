"""The serving commands: export, recommend, bench, and serve as a real process."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from adarec.errors import UserError
from adarec.io import read_json
from adarec.models.base import count_parameters
from adarec.runs import load_run_model
from adarec.serve.commands import add_serve_commands
from tests.serve.server import running

# The serving commands behind a parser of their own, as the adarec CLI registers them.
CLI = """
import argparse, sys
from adarec.serve.commands import add_serve_commands
parser = argparse.ArgumentParser(prog="adarec")
add_serve_commands(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
raise SystemExit(args.func(args))
"""


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="adarec")
    add_serve_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_recommend_prints_ranked_items(runs, capsys):
    items = read_json(runs["sasrec"] / "items.json")
    history = ",".join(items[1:4] + ["nope"])
    assert run_cli(["recommend", str(runs["sasrec"]), "--history", history, "--k", "4"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "item", "score"]
    ranked = [line.split() for line in lines[1:5]]
    assert [row[0] for row in ranked] == ["1", "2", "3", "4"]
    assert all(row[1] in items[1:] for row in ranked)
    assert "ignored unknown items: nope" in out


def test_recommend_json_matches_across_backends(runs, capsys):
    responses = []
    for backend in ("eager", "onnx"):
        argv = [
            "recommend",
            str(runs["nextitnet"]),
            "--history",
            "",
            "--k",
            "3",
            "--json",
            "--backend",
            backend,
        ]
        assert run_cli(argv) == 0
        responses.append(json.loads(capsys.readouterr().out))
    assert responses[0] == responses[1]
    assert responses[0]["fallback"] == "popularity" and len(responses[0]["items"]) == 3


def test_recommend_bad_k_is_a_user_error(runs):
    with pytest.raises(UserError, match="k must be an integer between 1 and"):
        run_cli(["recommend", str(runs["sasrec"]), "--history", "x", "--k", "0"])


def test_export_command_writes_the_artefact(runs, tmp_path, capsys):
    out = tmp_path / "ts"
    assert (
        run_cli(["export", str(runs["bert4rec"]), "--format", "torchscript", "--out", str(out)])
        == 0
    )
    assert str(out) in capsys.readouterr().out
    assert read_json(out / "metadata.json")["format"] == "torchscript"
    assert run_cli(["recommend", str(out), "--history", "", "--k", "2"]) == 0


def test_bench_compares_runs_and_writes_json(runs, tmp_path, capsys):
    out = tmp_path / "bench.json"
    first, second = runs["sasrec"], runs["student-causal"]
    argv = [
        "bench",
        str(first),
        str(second),
        "--threads",
        "1",
        "--batch-sizes",
        "1,4",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--out",
        str(out),
    ]
    assert run_cli(argv) == 0
    table = capsys.readouterr().out
    assert "onnx" in table and "torchscript" in table and "student" in table
    result = read_json(out)
    assert result["threads"] == 1 and result["batch_sizes"] == [1, 4] and result["machine"]
    teacher, student = result["runs"]
    assert (teacher["model"], student["model"]) == ("sasrec", "student")
    assert teacher["params"] == count_parameters(load_run_model(first)[0])
    assert teacher["macs_per_history"] > 0
    for run in result["runs"]:
        assert set(run["latency"]) == {"eager", "torchscript", "onnx", "compiled"}
        for backend, per_batch in run["latency"].items():
            assert set(per_batch) == {"1", "4"}
            for batch, stats in per_batch.items():
                assert 0 < stats["median_ms"] <= stats["p95_ms"]
                expected = teacher["latency"][backend][batch]["median_ms"] / stats["median_ms"]
                assert run["speedup"][backend][batch] == pytest.approx(expected, rel=1e-2)
    assert all(v == 1.0 for per_batch in teacher["speedup"].values() for v in per_batch.values())


def test_bench_refuses_runs_of_other_data(runs, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(runs["pop"], other)
    items = read_json(other / "items.json")
    (other / "items.json").write_text(json.dumps(items[:1] + list(reversed(items[1:]))))
    with pytest.raises(UserError, match="other data"):
        run_cli(["bench", str(runs["pop"]), str(other), "--repeats", "1"])


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_answers_and_stops_cleanly(runs, stop):
    """``adarec serve`` as its own process: serves, then exits 0 on Ctrl-C or SIGTERM."""
    argv = [
        sys.executable,
        "-c",
        CLI,
        "serve",
        str(runs["student-paper"]),
        "--port",
        "0",
        "--backend",
        "torchscript",
        "--no-access-log",
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy()
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("serving student (student, torchscript) on http://127.0.0.1:")
        url = line.split(" on ")[1].split(";")[0]
        for _ in range(200):
            try:
                health = httpx.get(f"{url}/health", timeout=5)
                break
            except httpx.TransportError:
                process.poll()
                assert process.returncode is None
                time.sleep(0.05)
        assert health.json()["status"] == "ok"
        response = httpx.post(f"{url}/recommend", json={"history": [], "k": 2}, timeout=5)
        assert response.json()["fallback"] == "popularity"
        process.send_signal(stop)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "server stopped" in output


@pytest.fixture
def served_app(monkeypatch):
    """``adarec serve`` up to the point of serving: the app it would serve, and its output."""
    import adarec.serve.app

    apps = []
    monkeypatch.setattr(adarec.serve.app, "serve", lambda app, sock, access_log: apps.append(app))
    return apps


def test_serve_streams_events_of_a_streamable_model(runs, served_app, capsys):
    assert run_cli(["serve", str(runs["student-causal"]), "--port", "0"]) == 0
    assert "/events with the memory store and exact top-k" in capsys.readouterr().out
    items = read_json(runs["student-causal"] / "items.json")
    with running(served_app[0]) as http:
        body = {"user": "u", "item": items[1], "history": [], "k": 3}
        assert http.post("/events", json=body).json()["events"] == 1
        assert http.get("/health").json()["store"]["kind"] == "memory"


def test_serve_without_state_for_a_model_that_cannot_stream(runs, served_app, capsys):
    assert run_cli(["serve", str(runs["pop"]), "--port", "0"]) == 0
    assert "/events off (Popularity has no per-event inference" in capsys.readouterr().out
    with pytest.raises(UserError, match="Popularity has no per-event inference"):
        run_cli(["serve", str(runs["pop"]), "--port", "0", "--state", "memory"])
    # --index is for /events alone: refused, not ignored, where /events is off.
    with pytest.raises(UserError, match="--index needs /events.*Popularity"):
        run_cli(["serve", str(runs["pop"]), "--port", "0", "--index", "faiss"])
    with running(served_app[0]) as http:
        refused = http.post("/events", json={"user": "u", "item": 1})
    assert refused.status_code == 404
    assert "Popularity has no per-event inference" in refused.json()["detail"]


def test_events_of_an_onnx_service_do_not_suggest_state(runs, served_app):
    assert run_cli(["serve", str(runs["student-causal"]), "--port", "0", "--backend", "onnx"]) == 0
    with running(served_app[0]) as http:
        refused = http.post("/events", json={"user": "u", "item": 1})
    assert refused.status_code == 404
    detail = refused.json()["detail"]
    assert "needs the eager or compiled backend" in detail and "--state" not in detail


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--state", "postgres://db"], "--state must be 'memory' or a redis:// URL"),
        (["--state", "memory", "--backend", "onnx"], "--state needs the eager or compiled backend"),
        (["--max-body-mb", "0"], "--max-body-mb must be positive"),
        (["--max-users", "0"], "--max-users and --max-state-mb must be positive"),
        (["--max-state-mb", "nan"], "--max-users and --max-state-mb must be positive"),
        (["--max-state-mb", "inf"], "--max-users and --max-state-mb must be positive"),
        (["--max-body-mb", "nan"], "--max-body-mb must be positive"),
        (["--max-body-mb", "inf"], "--max-body-mb must be positive"),
        (["--state", "redis://127.0.0.1/one"], "the database must be a number; got 'one'"),
        (["--state", "redis://127.0.0.1:63a79/0"], "malformed Redis URL"),
        (["--backend", "onnx", "--index", "faiss"], "--index needs the eager or compiled"),
        (["--workers", "2", "--state", "redis://127.0.0.1/x"], "the database must be a number"),
        (["--workers", "2", "--state", "redis://h/0", "--max-state-mb", "nan"], "must be positive"),
    ],
)
def test_serve_refuses_bad_options(runs, served_app, extra, message):
    with pytest.raises(UserError, match=message):
        run_cli(["serve", str(runs["student-causal"]), "--port", "0", *extra])
    assert served_app == []
