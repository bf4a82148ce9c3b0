"""``adarec run`` end to end on synthetic data: every stage, every report file, resume."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from adarec.config import load_config
from adarec.nas.architect import Architect
from adarec.nas.budget import CostModel
from adarec.nas.supernet import Supernet
from adarec.pipeline.evaluate import evaluate_run
from adarec.pipeline.report import write_report
from adarec.pipeline.run import run_baseline, run_pipeline
from adarec.pipeline.student import run_student
from adarec.runs import load_run_model
from adarec.serve.bench import bench_runs
from adarec.serve.export import export_run
from adarec.serve.predictor import Predictor
from tests.conftest import forbid_data_preparation, tiny_config


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


def test_no_cost_ablation_searches_without_any_cost_term(finished_run: Path, tmp_path: Path):
    """The no_cost row under the default budget form: its search has no cost model, sends
    alpha no cost gradient, and its student is not re-derived under student.budget."""
    cfg = tiny_config("model.name=nextitnet", "student.budget=5x")
    assert cfg.search.cost_form == "budget"
    dirs = run_baseline(
        "no_cost", cfg, tmp_path, finished_run / "teacher", finished_run / "search", True
    )
    search_dir = dirs["no_cost"] / "search"
    assert json.loads((search_dir / "cost_table.json").read_text())["budget"] is None
    history = json.loads((search_dir / "history.json").read_text())
    assert history and not any("expected_cost" in record for record in history)
    student = json.loads((dirs["no_cost"] / "metrics.json").read_text())
    assert "budget" not in student["cost"]
    # The search's own settings, given a cost model whose target every cell is far over:
    # alpha's loss gains no term, while the pipeline's settings add a cost gradient.
    searched = load_config(search_dir / "config.yaml", []).search
    net = Supernet(20, 8, 8, 2, 2)
    costs = {op: 100.0 * (k + 1) for k, op in enumerate(net.op_names)}
    model = CostModel("macs", 10.0, costs, 2, target=1.0, budget="test")
    task, epoch = torch.tensor(1.0), searched.epochs - 1  # past the warm-up
    searched.entropy = cfg.search.entropy = 0.0  # only the cost term is compared
    no_cost = Architect(net, searched, seed=0, cost_model=model, paper_costs=costs)
    assert no_cost.penalty(task, [], epoch) is None
    with_cost = Architect(net, cfg.search, seed=0, cost_model=model)
    with_cost.zero_grad()
    with_cost.penalty(task, [], epoch).backward()
    assert float(net.alphas[0].grad.abs().sum()) > 0


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


def test_a_moved_run_still_serves_measures_evaluates_and_retrains(tmp_path: Path, monkeypatch):
    """Runs find each other by relative paths and keep what serving needs: a pipeline's
    directory moved elsewhere works, and serving, bench and the report prepare no data."""
    cfg = tiny_config("model.name=sasrec", "train.epochs=1", "search.epochs=1", "student.epochs=1")
    run_pipeline(cfg, tmp_path / "before", baselines=[], quiet=True)
    moved = tmp_path / "elsewhere" / "after"
    shutil.move(tmp_path / "before", moved)
    assert json.loads((moved / "search" / "teacher.json").read_text()) == {"run_dir": "../teacher"}

    with monkeypatch.context() as patch:
        forbid_data_preparation(patch)
        artefact = export_run(moved / "student", "onnx", tmp_path / "artefact")
        assert Predictor.from_run(artefact).recommend([], k=2)["fallback"] == "popularity"
        assert Predictor.from_run(moved / "student").recommend([], k=2)["items"]
        bench = bench_runs([moved / "teacher", moved / "student"], 1, (1, 2), 1, 0, ("eager",))
        assert [run["model"] for run in bench["runs"]] == ["sasrec", "student"]
        teacher, search, student = (moved / name for name in ("teacher", "search", "student"))
        report = write_report(cfg, moved, teacher, search, student, {})
        assert set(report["latency_ms"]) == {"teacher", "student"}

    saved = json.loads((moved / "student" / "metrics.json").read_text())
    assert evaluate_run(moved / "student")["test"] == saved["test"]
    kd = copy.deepcopy(cfg)
    kd.student.loss = "kd"  # reads the teacher through the search's teacher.json
    assert run_student(kd, moved / "kd", moved / "search", quiet=True)["test"]
