"""Launch a scenario in 2 CPU processes joined by gloo, as torchrun would, and audit them.

Each process gets the environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*),
so ``start_run`` joins the group exactly as under ``python -m torch.distributed.run``. Every
process records the state of each stage right after its training loop, and each file it
creates, writes, moves or removes under the watched folders.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

WORLD = 2
_WRITE_EVENTS = (
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.truncate",
    "os.link",
    "os.symlink",
    "shutil.rmtree",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_processes(
    scenario: Callable[[Path], None],
    root: Path,
    watched: list[Path],
    per_rank_seed: bool = False,
) -> list[dict[str, Any]]:
    """Run ``scenario(root)`` on 2 ranks; per rank: {"stages": [(desc, state)], "writes": []}.

    ``per_rank_seed`` seeds every rank differently (seed + rank), so that their dropout
    generators differ as they may in any real run.
    """
    out = root / f"ranks-{scenario.__name__}"
    out.mkdir(parents=True, exist_ok=True)
    torch.multiprocessing.spawn(
        _worker,
        args=(free_port(), scenario, root, [str(w) for w in watched], per_rank_seed, str(out)),
        nprocs=WORLD,
        join=True,
    )
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _worker(
    rank: int, port: int, scenario, root: Path, watched: list[str], per_rank_seed: bool, out: str
) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
    )
    torch.set_num_threads(1)
    audit = {"on": True, "writes": []}
    sys.addaudithook(lambda event, args: _record_write(event, args, watched, audit))
    stages: list[tuple[str, dict[str, Any]]] = []
    _capture_stages(stages)
    if per_rank_seed:
        _seed_per_rank(rank)
    try:
        scenario(root)
    finally:
        audit["on"] = False
        torch.save({"stages": stages, "writes": audit["writes"]}, f"{out}/rank{rank}.pt")
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _record_write(event: str, args: tuple, watched: list[str], audit: dict) -> None:
    if not audit["on"]:
        return
    if event == "open":
        path, mode, flags = args
        writing = (
            any(c in mode for c in "wax+")
            if isinstance(mode, str)
            else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        )
        paths = [path] if writing else []
    elif event in _WRITE_EVENTS:
        paths = [a for a in args[:2] if isinstance(a, str | bytes | os.PathLike)]
    else:
        return
    for path in paths:
        if isinstance(path, int):
            continue
        full = os.path.abspath(os.fsdecode(path))
        if any(full.startswith(w) for w in watched):
            audit["writes"].append((event, full))


def _capture_stages(stages: list) -> None:
    """Wrap the loop as every stage runs it (``StageRun.train``): keep each final state."""
    import adarec.pipeline.stage as stage_module
    from adarec.train.loop import run_training

    def capturing(stage, *args, **kwargs):
        result = run_training(stage, *args, **kwargs)
        state = {"model": stage.model.state_dict(), "stage": stage.state_dict()}
        if hasattr(stage, "mapper"):
            state["mapper"] = stage.mapper.state_dict()
        stages.append((kwargs.get("desc", "train"), _cpu(state)))
        return result

    stage_module.run_training = capturing


def _seed_per_rank(rank: int) -> None:
    import adarec.pipeline.common as common
    from adarec.runtime.seed import seed_everything

    common.seed_everything = lambda seed: seed_everything(seed + rank)


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cpu(v) for v in value)
    return value


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """Exact equality of nested states (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def cli(*argv: str) -> None:
    """One ``adarec`` command; fails the worker on a non-zero exit."""
    from adarec.cli import main

    code = main(list(argv))
    assert code == 0, f"adarec {' '.join(argv)} exited with {code}"


def tiny_flags(*extra: str) -> list[str]:
    """The tiny synthetic configuration of tests/conftest.py as ``--set`` options."""
    from tests.conftest import TINY

    flags: list[str] = []
    for item in [*TINY, *extra]:
        flags += ["--set", item]
    return flags


def relative_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
