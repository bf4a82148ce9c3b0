"""Every stage command under 2 gloo processes: same weights on every rank, rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adarec.pipeline.evaluate import evaluate_run
from tests.distributed.helpers import (
    assert_identical,
    cli,
    relative_files,
    run_two_processes,
    tiny_flags,
)


def _commands(runs: Path) -> None:
    """Teacher, single-path search and retraining, as a user would type them."""
    cli("teacher", "--model", "sasrec", "--out", str(runs / "teacher"), "--quiet", *tiny_flags())
    cli("search", "--teacher", str(runs / "teacher"), "--out", str(runs / "search"), "--quiet")
    cli("finetune", "--search", str(runs / "search"), "--out", str(runs / "student"), "--quiet")


def _scenario(root: Path) -> None:
    _commands(root / "runs")
    # Evaluate in the same process group: tearing it down and joining a new one on the same
    # store port raced (a rank could hang in init_process_group).
    cli("evaluate", str(root / "runs" / "teacher"))


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("ddp")
    cache = tmp_path_factory.mktemp("ddp-cache")
    with pytest.MonkeyPatch.context() as patch:  # the autouse cache fixture is per test
        patch.setenv("ADAREC_CACHE_DIR", str(cache))
        ranks = run_two_processes(_scenario, root, watched=[root / "runs", cache])
    return root, ranks


def test_every_stage_ends_with_identical_states_on_both_ranks(two_process_run):
    _, (rank0, rank1) = two_process_run
    assert [d for d, _ in rank0["stages"]] == ["sasrec", "search", "student"]
    for (desc, state0), (_, state1) in zip(rank0["stages"], rank1["stages"], strict=True):
        assert_identical(state0, state1, desc)
    search = dict(rank0["stages"])["search"]
    assert any(k.startswith("alphas.") for k in search["model"])  # alpha is compared too
    emd = search["mapper"]["student_weights"]
    assert not torch.allclose(emd, torch.full_like(emd, 1 / emd.numel()))  # and it moved


def test_only_rank_zero_writes(two_process_run):
    _, (rank0, rank1) = two_process_run
    assert rank1["writes"] == []
    written = {Path(path).name for _, path in rank0["writes"]}  # the audit does see writes
    assert {"metrics.json", "model.pt", "last.pt", "log.txt", "config.yaml"} <= written
    assert "evaluation.json" in written


def test_files_match_a_single_process_run(two_process_run, tmp_path: Path):
    root, _ = two_process_run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes (tiny models: threads only cost)
    try:
        _commands(tmp_path / "runs")
        cli("evaluate", str(tmp_path / "runs" / "teacher"))
    finally:
        torch.set_num_threads(threads)
    assert relative_files(root / "runs") == relative_files(tmp_path / "runs")


def test_distributed_evaluation_equals_single_process(two_process_run):
    root, _ = two_process_run
    teacher = root / "runs" / "teacher"
    two_process = json.loads((teacher / "evaluation.json").read_text())
    written = json.loads((teacher / "metrics.json").read_text())
    single = json.loads(json.dumps(evaluate_run(teacher)))  # same float round trip as the file
    assert two_process == single
    assert written["valid"] == single["valid"] and written["test"] == single["test"]


def test_checkpoint_holds_every_ranks_rng_state(two_process_run):
    root, _ = two_process_run
    last = torch.load(root / "runs" / "search" / "checkpoints" / "last.pt", weights_only=False)
    assert isinstance(last["rng"], list) and len(last["rng"]) == 2
