"""Tiny trained runs (synthetic data, one short epoch) shared by all serving tests."""

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from adarec.config import load_config

TEACHERS = ("sasrec", "nextitnet", "bert4rec", "pop")
STUDENTS = ("student-causal", "student-paper")

# Small enough that the whole session trains in seconds; the runs are real run directories.
TINY = [
    "data.dataset=synthetic",
    "data.synthetic_users=80",
    "data.synthetic_items=60",
    "data.max_len=10",
    "device=cpu",
    "model.hidden_size=16",
    "model.num_heads=1",
    "model.num_blocks=1",
    "model.inner_size=32",
    "model.pretrain_epochs=1",
    "search.width=16",
    "search.cells=2",
    "search.nodes=2",
] + [
    f"{stage}.{key}"
    for stage in ("train", "search", "student")
    for key in ("epochs=1", "max_steps_per_epoch=2", "batch_size=16")
]


def tiny_config(*extra: str):
    return load_config(None, TINY + list(extra))


def damaged_copy(run: Path, target: Path, name: str, content: bytes | None) -> Path:
    """A copy of ``run`` at ``target`` whose file ``name`` is removed (``content`` None) or
    holds ``content``."""
    shutil.copytree(run, target)
    if content is None:
        (target / name).unlink()
    else:
        (target / name).write_bytes(content)
    return target


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run directories: one per teacher type and a derived student of each op set."""
    from adarec.pipeline import search, student, teacher

    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        # The prepared-data cache of these runs stays in the test's temporary directory
        # (servers started as subprocesses inherit it).
        mp.setenv("ADAREC_CACHE_DIR", str(root / "cache"))
        out = {}
        with pytest.MonkeyPatch.context() as no_plots:
            # Figures are not what these tests check, and drawing them takes seconds.
            for module in (search, student, teacher):
                for plot in ("plot_training_curves", "plot_alpha_history", "draw_genotype"):
                    no_plots.setattr(module, plot, lambda *args, **kwargs: None, raising=False)
            for name in TEACHERS:
                out[name] = root / name
                teacher.train_teacher(tiny_config(f"model.name={name}"), out[name], quiet=True)
            for name in STUDENTS:
                cfg = tiny_config("model.name=sasrec", f"search.ops={name.split('-')[1]}")
                search.run_search(cfg, root / f"search-{name}", out["sasrec"], quiet=True)
                out[name] = root / name
                student.run_student(cfg, out[name], root / f"search-{name}", quiet=True)
        yield out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    """A redis-server on ``127.0.0.1:port``, answering PING once this returns."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = subprocess.Popen(
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
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError("redis did not start")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port for this session, stopped afterwards."""
    port = free_port()
    server = start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)
