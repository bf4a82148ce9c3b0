"""The real launcher: ``python -m torch.distributed.run --nproc-per-node 2 -m adarec run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.distributed.helpers import free_port, tiny_flags


def test_whole_pipeline_under_torchrun(tmp_path: Path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "adarec",
        "run",
        "--teacher-model",
        "sasrec",
        "--out",
        str(out),
        "--quiet",
        *tiny_flags("run.baselines=[]"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["speedup"]) == {"1", "4"}
    log = (out / "teacher" / "log.txt").read_text()
    assert "world size 2" in log
    assert "batch 32 per process x 2 processes = global batch 64" in log
    for stage in ("teacher", "search", "student"):
        assert (out / stage / "metrics.json").exists(), stage
