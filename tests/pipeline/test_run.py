"""``adarec run`` end to end on synthetic data: every stage, every report file, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adarec.pipeline.run import run_pipeline
from adarec.runs import load_run_model
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "r"
    cfg = tiny_config("model.name=nextitnet", "run.baselines=[pop,no_kd,random_arch_budget]")
    run_pipeline(cfg, out, quiet=True)
    return out


def test_layout_contract(finished_run: Path):
    out = finished_run
    for path in (
        "teacher/metrics.json",
        "search/genotype.json",
        "search/genotype.txt",
        "search/genotype.png",
        "search/alphas.png",
        "search/curves.png",
        "search/cost_table.json",
        "student/metrics.json",
        "student/model.pt",
        "baselines/pop/metrics.json",
        "baselines/no_kd/metrics.json",
        "report.md",
        "report.json",
        "accuracy_latency.png",
    ):
        assert (out / path).exists(), path
    report = json.loads((out / "report.json").read_text())
    assert {"teacher", "student", "baselines", "latency_ms", "speedup", "seconds"} <= set(report)
    randoms = {f"random_arch_budget_{k}" for k in range(3)}
    assert set(report["baselines"]) == {"pop", "no_kd"} | randoms
    assert set(report["latency_ms"]["teacher"]) == {"1", "4"}
    assert set(report["speedup"]) == {"1", "4"}
    assert set(report["seconds"]) == {"teacher", "search", "student"}
    student = json.loads((out / "student" / "metrics.json").read_text())
    assert {"architecture", "cost", "valid", "test", "params"} <= set(student)
    assert student["architecture"]["op_set"] == "causal"
    assert "NDCG@10" in (out / "report.md").read_text()


def test_student_and_random_cells_meet_the_budget(finished_run: Path):
    report = json.loads((finished_run / "report.json").read_text())
    budget = report["budget"]
    assert budget["budget"] == "5x" and budget["unit"] == "macs"
    assert budget["target"] == pytest.approx(report["teacher"]["macs"] / 5)
    assert budget["within"] and budget["counted_within"]
    assert report["student"]["macs"] == budget["counted"] <= budget["modelled"]
    for k in range(3):
        random_cell = report["baselines"][f"random_arch_budget_{k}"]
        assert random_cell["macs"] <= budget["target"]
    comparison = report["searched_vs_random"]
    values = [
        report["baselines"][f"random_arch_budget_{k}"]["test"]["full"]["NDCG@10"] for k in range(3)
    ]
    assert comparison["random"] == values
    assert comparison["searched"] == report["student"]["test"]["full"]["NDCG@10"]
    # Every stage kept its per-user test ranks, so the comparison is paired over users.
    assert comparison["paired"] is True
    ranks = json.loads((finished_run / "student" / "test_ranks.json").read_text())["full"]
    assert len(ranks) == report["student"]["test"]["num_users"]
    assert (
        "test_ranks" not in report["student"]["test"] and "ranks" not in report["student"]["test"]
    )
    markdown = (finished_run / "report.md").read_text()
    assert "## Budget" in markdown and "random cells under the same budget" in markdown


def test_search_history_tracks_alpha(finished_run: Path):
    history = json.loads((finished_run / "search" / "history.json").read_text())
    for record in history:
        assert {"tau", "alpha_entropy", "alpha_max_prob", "alpha_drift", "alpha_probs"} <= set(
            record
        )
        assert record["alpha_entropy"] <= record["alpha_uniform_entropy"] + 1e-9


def test_student_loads_and_is_smaller(finished_run: Path):
    student, spec = load_run_model(finished_run / "student")
    assert spec["kind"] == "student"
    report = json.loads((finished_run / "report.json").read_text())
    assert report["student"]["params"]["total"] < report["teacher"]["params"]["total"]


def test_rerun_reuses_finished_stages(finished_run: Path):
    before = (finished_run / "search" / "metrics.json").stat().st_mtime_ns
    cfg = tiny_config("model.name=nextitnet", "run.baselines=[pop,no_kd,random_arch_budget]")
    run_pipeline(cfg, finished_run, quiet=True)
    assert (finished_run / "search" / "metrics.json").stat().st_mtime_ns == before
