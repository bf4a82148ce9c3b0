"""Bi-level search, resume and distillation retraining under 2 gloo processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adarec.config import load_config
from adarec.pipeline.run import run_baseline
from adarec.runtime import distributed as dist
from tests.distributed.helpers import assert_identical, cli, run_two_processes, tiny_flags

STAGES = ["sasrec", "search", "search", "search", "student", "small_kd"]


def _search(runs: Path, out: str, epochs: int, *extra: str) -> None:
    # Bi-level: two backward passes per step through the DDP module (weights, then alpha).
    cli(
        "search",
        "--teacher",
        str(runs / "teacher"),
        "--out",
        str(runs / out),
        "--quiet",
        "--set",
        "search.optimization=bilevel",
        "--set",
        f"search.epochs={epochs}",
        # The entropy ramp spans search.epochs, which the resume below raises from 1 to 2:
        # switched off, so that the resumed run must match the uninterrupted one exactly.
        "--set",
        "search.entropy=0",
        *extra,
    )


def _scenario(root: Path) -> None:
    runs = root / "runs"
    cli(
        "teacher",
        "--model",
        "sasrec",
        "--out",
        str(runs / "teacher"),
        "--quiet",
        *tiny_flags("train.epochs=1"),
    )
    _search(runs, "full", 2)
    _search(runs, "part", 1)
    # As if killed after its first epoch, before writing metrics.json (a finished run is
    # read-only, --resume or not).
    if dist.is_main():
        (runs / "part" / "metrics.json").unlink()
    dist.barrier()
    _search(runs, "part", 2, "--resume")
    # Retraining with every distillation loss (DistillStage without search).
    cli(
        "finetune",
        "--search",
        str(runs / "full"),
        "--out",
        str(runs / "student"),
        "--quiet",
        "--set",
        "student.loss=kd",
    )
    # Logit-only KD: the embedding and hidden projections must not sit unused in DDP.
    cfg = load_config(runs / "teacher" / "config.yaml")
    run_baseline("small_kd", cfg, runs / "baselines", runs / "teacher", runs / "full", True)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("ddp-search")
    with pytest.MonkeyPatch.context() as patch:  # the autouse cache fixture is per test
        patch.setenv("ADAREC_CACHE_DIR", str(tmp_path_factory.mktemp("ddp-search-cache")))
        # Ranks seeded apart: their dropout generators differ, as they may in any run, so
        # identical weights come from DDP and an exact resume needs each rank's own RNG.
        ranks = run_two_processes(_scenario, root, [root / "runs"], per_rank_seed=True)
    return root, ranks


def test_every_stage_ends_with_identical_states_on_both_ranks(two_process_run):
    _, (rank0, rank1) = two_process_run
    assert [d for d, _ in rank0["stages"]] == STAGES
    for (desc, state0), (_, state1) in zip(rank0["stages"], rank1["stages"], strict=True):
        assert_identical(state0, state1, desc)
    search = rank0["stages"][1][1]
    assert search["stage"]["architect"]["optimizer"]["state"]  # alpha was stepped, and compared
    assert "mapper" in rank0["stages"][4][1]  # the KD retraining's EMD weights, compared
    assert rank1["writes"] == []


def test_resumed_search_continues_exactly(two_process_run):
    root, _ = two_process_run
    full = torch.load(root / "runs/full/checkpoints/last.pt", weights_only=False)
    part = torch.load(root / "runs/part/checkpoints/last.pt", weights_only=False)
    assert part["epoch"] == full["epoch"] == 1
    assert_identical(part["model"], full["model"], "model")
    assert_identical(part["stage"], full["stage"], "stage")  # optimisers, alpha, EMD weights
    assert [h["loss"] for h in part["history"]] == [h["loss"] for h in full["history"]]
    assert not torch.equal(full["rng"][0]["torch"], full["rng"][1]["torch"])


def test_logit_only_kd_baseline_finishes(two_process_run):
    root, _ = two_process_run
    assert (root / "runs" / "baselines" / "small_kd" / "metrics.json").exists()
