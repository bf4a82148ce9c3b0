"""``adarec front``: one search's students at every budget, on tiny synthetic data:
front.json and front.png, the bookkeeping, resume, CLI errors, and the selection of
adarec run's student (its default)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adarec.cli import main
from adarec.errors import UserError
from adarec.nas.front import Candidate, select_student
from adarec.pipeline import front as front_module
from adarec.pipeline import stage as stage_module
from adarec.pipeline.front import build_front
from adarec.pipeline.run import run_pipeline
from adarec.pipeline.search import run_search
from adarec.pipeline.teacher import train_teacher
from tests.conftest import tiny_config

FAST = ["model.name=sasrec", "train.epochs=1", "search.epochs=2", "student.epochs=1"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("front")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAREC_CACHE_DIR", str(root / "cache"))
        cfg = tiny_config(*FAST)
        train_teacher(cfg, root / "teacher", quiet=True)
        run_search(cfg, root / "search", root / "teacher", quiet=True)
    return root / "search"


@pytest.fixture(scope="module")
def fronted(searched, tmp_path_factory) -> Path:
    """A finished ``adarec front`` (through the CLI) in its own copy of the search."""
    root = tmp_path_factory.mktemp("fronted")
    shutil.copytree(searched.parent / "teacher", root / "teacher")
    search = Path(shutil.copytree(searched, root / "search"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAREC_CACHE_DIR", str(searched.parent / "cache"))
        assert main(["front", str(search), "--quiet", *_sets()]) == 0
    return root / "front"


def _sets() -> list[str]:
    # The search's saved config is the tiny one; only the front's own keys are set here.
    # The whole front (front.retrain all): every candidate that can be on it is retrained.
    return [
        *("--set", "front.budgets=6", "--set", "front.retrain=all"),
        *("--set", "bench.repeats=2", "--set", "bench.warmup=1"),
    ]


def _read(front_dir: Path) -> dict:
    return json.loads((front_dir / "front.json").read_text())


def test_front_json_and_png(fronted):
    front = _read(fronted)
    assert (fronted / "front.png").stat().st_size > 0
    assert len(front["sweep"]) >= 6 and "5x" in front["sweep"]  # the search's own budget
    assert front["teacher"]["valid_ndcg10"] > 0 and set(front["teacher"]["latency_ms"]) == {
        "1",
        "4",
    }
    students = front["students"]
    assert students and any(s["retrained"] for s in students)
    for s in students:
        assert {"budget", "cell", "params", "macs", "cost", "estimate"} <= set(s)
        assert {"valid_ndcg10", "valid_se", "seconds", "epochs"} <= set(s["estimate"])
        if s["retrained"]:
            assert {"valid_ndcg10", "valid_se", "test_ndcg10", "test_se"} <= set(s)
            assert set(s["latency_ms"]) == set(s["speedup"]) == {"1", "4"}
            assert s["retrain_seconds"] >= 0
            assert (fronted / s["run_dir"] / "metrics.json").exists()
            metrics = json.loads((fronted / s["run_dir"] / "metrics.json").read_text())
            assert metrics["architecture"] == s["cell"]
            assert metrics["cost"]["budget"]["budget"] == s["budget"]  # derived under it
    selected = front["selected"]
    assert selected["keep"] == 0.99 and selected["select_budget"] is None
    assert (selected["name"] is None) == (not selected["met"])
    assert selected["name"] or selected["closest"]
    seconds = front["seconds"]
    assert seconds["front"] == pytest.approx(
        seconds["estimates"] + seconds["retraining"] + seconds["measure"], abs=0.05
    )


def test_front_bookkeeping_monotone_distinct_and_non_dominated(fronted):
    front = _read(fronted)
    students = front["students"]
    speedups = [s["speedup_target"] for s in students]
    costs = [s["cost"] for s in students]
    assert speedups == sorted(speedups)
    assert costs == sorted(costs, reverse=True)  # a tighter budget never costs more
    assert len({json.dumps(s["cell"], sort_keys=True) for s in students}) == len(students)
    swept = sorted(b for s in students for b in s["budgets"])
    assert swept == sorted(front["sweep"])
    by_budget = {s["budget"]: s for s in students}
    for s in students:
        assert s["retrained"] == (s["dominated_by"] is None)
        if s["dominated_by"]:
            better = by_budget[s["dominated_by"]]
            assert better["cost"] <= s["cost"]
            assert better["estimate"]["valid_ndcg10"] > s["estimate"]["valid_ndcg10"]
    # The selection is the rule's, on the retrained students' validation NDCG@10.
    retrained = [s for s in students if s["retrained"]]
    expected = select_student(
        [
            Candidate(s["budget"], s["valid_ndcg10"], s["cost"], s["macs"], s["latency_ms"]["1"])
            for s in retrained
        ],
        front["teacher"]["valid_ndcg10"],
        keep=0.99,
    )
    assert front["selected"]["name"] == expected.name
    assert front["selected"]["reason"] == expected.reason


def _forbid_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a finished estimate or student was trained again")

    monkeypatch.setattr(front_module, "run_student", refuse)
    monkeypatch.setattr(front_module, "StageRun", refuse)


def _copy(fronted: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = fronted.parent
    shutil.copytree(root / "teacher", tmp_path / "teacher")
    search = Path(shutil.copytree(root / "search", tmp_path / "search"))
    return search, Path(shutil.copytree(fronted, tmp_path / "front"))


def test_second_front_reuses_finished_students_and_reads_validation_only(
    fronted, tmp_path, monkeypatch
):
    search, out = _copy(fronted, tmp_path)
    first = _read(out)
    # Give the retrained students test scores that would reverse any choice made on test:
    # the selection must not move.
    for rank, s in enumerate(s for s in first["students"] if s["retrained"]):
        path = out / s["run_dir"] / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["test"]["full"]["NDCG@10"] = (
            0.001 if s["budget"] == first["selected"]["name"] else 0.9 + rank / 100
        )
        path.write_text(json.dumps(metrics))
    _forbid_training(monkeypatch)
    cfg = tiny_config(*FAST, "front.budgets=6", "front.retrain=all")
    second = build_front(cfg, search, out, quiet=True)
    assert [s["cell"] for s in second["students"]] == [s["cell"] for s in first["students"]]
    assert second["selected"]["name"] == first["selected"]["name"]
    for a, b in zip(first["students"], second["students"], strict=True):
        assert a["estimate"]["valid_ndcg10"] == b["estimate"]["valid_ndcg10"]
        assert a.get("valid_ndcg10") == b.get("valid_ndcg10")


def test_interrupted_front_resumes_estimates_and_students(searched, tmp_path, monkeypatch):
    search = Path(shutil.copytree(searched, tmp_path / "search"))
    shutil.copytree(searched.parent / "teacher", tmp_path / "teacher")
    out = tmp_path / "front"
    cfg = tiny_config(*FAST, "front.budgets=6", "front.retrain=all", "student.epochs=2")
    calls = {"estimate": 0, "finish": 0}
    real_estimate, real_finish = front_module._estimate, stage_module.StageRun.finish

    def estimate_then_stop(*args, **kwargs):
        calls["estimate"] += 1
        if calls["estimate"] == 2:
            raise KeyboardInterrupt  # killed during the second estimate
        return real_estimate(*args, **kwargs)

    monkeypatch.setattr(front_module, "_estimate", estimate_then_stop)
    with pytest.raises(KeyboardInterrupt):
        build_front(cfg, search, out, quiet=True)
    assert len(list(out.glob("estimates/e1/*/estimate.json"))) == 1
    monkeypatch.setattr(front_module, "_estimate", real_estimate)

    def finish_once_killed(self, *args, **kwargs):
        calls["finish"] += 1
        if calls["finish"] == 1:
            raise KeyboardInterrupt  # the first student trained, killed before its metrics
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(stage_module.StageRun, "finish", finish_once_killed)
    with pytest.raises(KeyboardInterrupt):
        build_front(cfg, search, out, quiet=True)
    interrupted = [d for d in out.glob("students/*") if not (d / "metrics.json").exists()]
    assert len(interrupted) == 1 and (interrupted[0] / "checkpoints" / "last.pt").exists()

    resumed = []
    real_training = stage_module.run_training

    def watch(stage, loop, train_data, context, *args, **kwargs):
        last = context.run_dir / "checkpoints" / "last.pt"
        resumed.append((context.run_dir, last.exists()))
        return real_training(stage, loop, train_data, context, *args, **kwargs)

    monkeypatch.setattr(stage_module, "run_training", watch)
    front = build_front(cfg, search, out, quiet=True)
    # The interrupted student continued from its checkpoint (its epochs were not run again).
    assert (interrupted[0], True) in resumed
    history = json.loads((interrupted[0] / "history.json").read_text())
    assert len(history) == 2
    assert all(s["retrained"] == (s["dominated_by"] is None) for s in front["students"])
    assert (out / "front.json").exists()


def test_a_folder_another_cell_left_at_a_budget_is_not_resumed(fronted, tmp_path):
    """After a re-derivation (an upgrade, another sweep) a budget's folder may hold another
    cell's unfinished run: the front trains its own cell beside it, never from it."""
    search, out = _copy(fronted, tmp_path)
    students = [s for s in _read(out)["students"] if s["retrained"]]
    assert len(students) >= 2
    mine, other = students[0], students[1]
    for s in students:
        assert Path(s["run_dir"]).name.startswith(f"{s['budget']}-")  # named by cell too
    # Another cell's unfinished run where this budget's folder used to be (students/BUDGET),
    # and no finished run of this budget's cell.
    shutil.rmtree(out / mine["run_dir"])
    stale = out / "students" / mine["budget"]
    shutil.copytree(out / other["run_dir"], stale)
    (stale / "metrics.json").unlink()
    cfg = tiny_config(*FAST, "front.budgets=6", "front.retrain=all")
    again = build_front(cfg, search, out, quiet=True)
    row = next(s for s in again["students"] if s["budget"] == mine["budget"])
    assert row["cell"] == mine["cell"] and row["run_dir"] == mine["run_dir"]
    metrics = json.loads((out / row["run_dir"] / "metrics.json").read_text())
    assert (
        metrics["architecture"]
        != json.loads((out / other["run_dir"] / "metrics.json").read_text())["architecture"]
    )
    assert not (stale / "metrics.json").exists()  # the stale folder was left alone


@pytest.mark.parametrize(
    ("option", "key"),
    [
        (["--keep", "1.5"], "run.keep"),
        (["--keep", "0"], "run.keep"),
        (["--keep", "most"], "run.keep"),
        (["--budget", "fast"], "run.select_budget"),
    ],
)
def test_cli_bad_keep_or_budget_is_one_error_naming_the_key(
    searched, tmp_path, capsys, option, key
):
    out = tmp_path / "front"
    assert main(["front", str(searched), "--out", str(out), *option]) == 2
    error = capsys.readouterr().err
    assert f"config key '{key}'" in error and error.count("adarec: error") == 1
    assert not out.exists()


def test_cli_budget_alone_selects_the_most_accurate_within_it(fronted, tmp_path, monkeypatch):
    search, out = _copy(fronted, tmp_path)
    _forbid_training(monkeypatch)
    assert (
        main(["front", str(search), "--out", str(out), "--budget", "2x", "--quiet", *_sets()]) == 0
    )
    selected = _read(out)["selected"]
    assert selected["keep"] is None and selected["select_budget"] == "2x"
    assert selected["met"] and "most accurate" in selected["reason"]


def _pipeline(out: Path, *extra: str) -> dict:
    cfg = tiny_config(*FAST, "run.front=true", "run.baselines=[no_kd]", "front.budgets=6", *extra)
    return run_pipeline(cfg, out, quiet=True)


def test_pipeline_selects_its_student_from_the_front(tmp_path, monkeypatch):
    import adarec.plots

    drawn = []
    real_plot = adarec.plots.plot_front
    monkeypatch.setattr(
        adarec.plots,
        "plot_front",
        lambda front, path, others=None: drawn.append(others) or real_plot(front, path, others),
    )
    out = tmp_path / "run"
    report = _pipeline(out)
    # front.png is drawn again once the baselines are measured, with them on its axes.
    assert drawn[-1] is not None and set(drawn[-1]) == {"no_kd"}
    assert (out / "front" / "front.json").exists() and (out / "front" / "front.png").exists()
    saved = json.loads((out / "report.json").read_text())
    assert {"teacher", "student", "speedup", "front", "selected"} <= set(saved)
    assert saved["front"] == report["front"] and saved["front"]
    for row in saved["front"]:
        assert {"budget", "speedup", "valid_ndcg10", "test_ndcg10"} <= set(row)
    assert {"budget", "keep"} <= set(saved["selected"])
    assert "The front of the search" in (out / "report.md").read_text()
    # The front's cost against one search plus one retraining, from front.json's seconds.
    cost = saved["front_cost"]
    seconds = json.loads((out / "front" / "front.json").read_text())["seconds"]
    assert cost["front_seconds"] == seconds["front"]
    ratio = cost["search_plus_front_over_search_plus_one_retraining"]
    total = seconds["search"] + seconds["front"]
    assert ratio == pytest.approx(
        total / (seconds["search"] + cost["selected_retrain_seconds"]), abs=1e-3
    )
    assert f"search + front = {ratio:.2f} x" in (out / "report.md").read_text()
    # student/ is a copy of the selected (or, when nothing met, the closest) front student,
    # not another retraining: same cell, same test metrics, no checkpoints.
    front = json.loads((out / "front" / "front.json").read_text())
    chosen = front["selected"]["name"] or front["selected"]["closest"]
    row = next(s for s in front["students"] if s["budget"] == chosen)
    student = json.loads((out / "student" / "metrics.json").read_text())
    source = json.loads((out / "front" / row["run_dir"] / "metrics.json").read_text())
    assert student == source and student["architecture"] == row["cell"]
    assert not (out / "student" / "checkpoints").exists()
    assert saved["student"]["test"] == source["test"]
    # report.md shows the cell it serves (not only the search's own derivation), and
    # every student of the sweep: those not retrained with their estimate and why not.
    from adarec.nas.genotype import genotype_from_dict, genotype_to_text

    markdown = (out / "report.md").read_text()
    assert genotype_to_text(genotype_from_dict(row["cell"])) in markdown
    others = [s for s in front["students"] if not s["retrained"]]
    assert saved["front_not_retrained"] == [
        {
            "budget": s["budget"],
            "macs": s["macs"],
            "estimate_valid_ndcg10": s["estimate"]["valid_ndcg10"],
            "reason": s["not_retrained"] or f"{s['dominated_by']} is cheaper and better",
        }
        for s in others
    ]
    for s in others:
        assert f"| {s['budget']} | {s['macs'] / 1e6:.3f} |" in markdown
    # The derived-cell baseline takes the selected student's cell.
    no_kd_dir = out / "baselines" / f"at-{chosen}" / "no_kd"
    no_kd = json.loads((no_kd_dir / "metrics.json").read_text())
    assert no_kd["architecture"] == row["cell"]


def test_pipeline_reselects_when_asked_again(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _pipeline(out)  # with the no_kd comparison of the selected cell
    first = json.loads((out / "front" / "front.json").read_text())
    retrained = [s for s in first["students"] if s["retrained"]]
    # Ask for the most accurate student within the cheapest retrained cell's speed-up:
    # nothing trains again, and student/ becomes that cell.
    _forbid_training(monkeypatch)
    cheapest = retrained[-1]
    _pipeline(out, "run.keep=null", f"run.select_budget={cheapest['budget']}")
    again = json.loads((out / "front" / "front.json").read_text())
    assert again["selected"]["name"] == cheapest["budget"]
    student = json.loads((out / "student" / "metrics.json").read_text())
    assert student["architecture"] == cheapest["cell"]
    assert not list(out.glob(".student.*"))  # the replacement left no staging directory
    # The comparison of the newly selected cell is trained beside the first one's.
    again_no_kd = out / "baselines" / f"at-{cheapest['budget']}" / "no_kd" / "metrics.json"
    assert json.loads(again_no_kd.read_text())["architecture"] == cheapest["cell"]
    first_chosen = first["selected"]["name"] or first["selected"]["closest"]
    assert (out / "baselines" / f"at-{first_chosen}" / "no_kd" / "metrics.json").exists()


def test_pipeline_refuses_student_budget_with_the_front(tmp_path):
    cfg = tiny_config(*FAST, "run.front=true", "student.budget=3x")
    with pytest.raises(UserError, match="student.budget.*run.front=false"):
        run_pipeline(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("setting", ["search.use_cost=false", "search.cost_form=paper"])
def test_pipeline_without_a_budgeted_search_has_no_front_and_says_why(tmp_path, setting):
    out = tmp_path / "run"
    report = _pipeline(out, setting, "run.baselines=[]")
    assert "front" not in report and "budget" in report["front_skipped"]
    assert not (out / "front").exists() and (out / "student" / "metrics.json").exists()
    assert "No front: search." in (out / "report.md").read_text()
    # Asking to select within a budget from a search without one is refused up front.
    cfg = tiny_config(*FAST, "run.front=true", setting, "run.select_budget=3x")
    with pytest.raises(UserError, match="selects from the front"):
        run_pipeline(cfg, tmp_path / "other", quiet=True)
    assert not (tmp_path / "other").exists()


def test_cli_run_keep_and_budget_are_the_selection(monkeypatch, tmp_path):
    seen = {}

    def fake(cfg, out, teacher_dir=None, baselines=None, quiet=False):
        seen["cfg"] = cfg
        raise UserError("stop here")

    monkeypatch.setattr("adarec.pipeline.run.run_pipeline", fake)
    assert main(["run", "--dataset", "synthetic", "--keep", "0.97", "--out", str(tmp_path)]) == 2
    assert seen["cfg"].run.keep == 0.97 and seen["cfg"].run.select_budget == ""
    assert main(["run", "--dataset", "synthetic", "--budget", "8x", "--out", str(tmp_path)]) == 2
    cfg = seen["cfg"]
    assert (cfg.run.keep, cfg.run.select_budget, cfg.search.budget) == (None, "8x", "8x")
    argv = ["run", "--dataset", "synthetic", "--budget", "8x", "--keep", "0.9"]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert (seen["cfg"].run.keep, seen["cfg"].run.select_budget) == (0.9, "8x")
    assert main(["run", "--dataset", "synthetic", "--keep", "2", "--out", str(tmp_path)]) == 2


def test_dominated_candidates_are_not_retrained(fronted, tmp_path, monkeypatch):
    search, out = _copy(fronted, tmp_path)
    first = _read(out)
    shutil.rmtree(out / "students")
    (out / "front.json").unlink()
    # With no uncertainty, any cheaper candidate with a higher estimate dominates.
    monkeypatch.setattr(front_module, "_difference_se", lambda e: [[0.0] * len(e) for _ in e])
    cfg = tiny_config(*FAST, "front.budgets=6", "front.retrain=all")
    front = build_front(cfg, search, out, quiet=True)
    students = front["students"]
    best_cheaper = [
        max((t["estimate"]["valid_ndcg10"] for t in students[k + 1 :]), default=-1.0)
        for k in range(len(students))
    ]
    for s, better in zip(students, best_cheaper, strict=True):
        assert s["retrained"] == (better <= s["estimate"]["valid_ndcg10"])
        assert any((out / "students").glob(f"{s['budget']}-*")) == s["retrained"]
    assert students[-1]["retrained"]  # the cheapest is always on the front
    assert [s["estimate"] for s in students] == [s["estimate"] for s in first["students"]]


def _needed(fronted: Path, tmp_path: Path, monkeypatch, *sets: str) -> dict:
    """The front of ``fronted``'s search again with front.retrain needed, from a copy that
    keeps the estimates but none of the students; counts the retrainings."""
    search, out = _copy(fronted, tmp_path)
    shutil.rmtree(out / "students")
    (out / "front.json").unlink()
    trained = []
    real = front_module.run_student

    def count(cfg, run_dir, *args, **kwargs):
        trained.append(Path(run_dir).name.rsplit("-", 1)[0])  # BUDGET-CELL: the budget
        return real(cfg, run_dir, *args, **kwargs)

    monkeypatch.setattr(front_module, "run_student", count)
    front = build_front(tiny_config(*FAST, "front.budgets=6", *sets), search, out, quiet=True)
    front["trained"] = trained
    return front


def test_needed_retrains_cheapest_first_and_stops_at_the_first_that_keeps(
    fronted, tmp_path, monkeypatch
):
    # A keep every student meets: the cheapest candidate decides, nothing dearer trains.
    front = _needed(fronted, tmp_path, monkeypatch, "run.keep=0.01")
    candidates = [s for s in front["students"] if s["dominated_by"] is None]
    cheapest = candidates[-1]
    assert front["trained"] == [cheapest["budget"]]
    assert front["selected"]["name"] == cheapest["budget"] and front["retrain"] == "needed"
    for s in candidates[:-1]:
        assert not s["retrained"] and "not needed" in s["not_retrained"]
        assert cheapest["budget"] in s["not_retrained"]


def _keeps_nothing(fronted: Path) -> None:
    whole = _read(fronted)
    best = max(s["valid_ndcg10"] for s in whole["students"] if s["retrained"])
    if best >= whole["teacher"]["valid_ndcg10"]:
        pytest.skip("a student of this tiny search keeps all of the teacher's accuracy")


def test_needed_retrains_every_candidate_when_none_keeps(fronted, tmp_path, monkeypatch):
    _keeps_nothing(fronted)
    front = _needed(fronted, tmp_path, monkeypatch, "run.keep=1", "front.max_cost=null")
    candidates = [s["budget"] for s in front["students"] if s["dominated_by"] is None]
    assert sorted(front["trained"]) == sorted(candidates)  # none skipped
    # The cheapest, then the dearest (the closest student when nothing keeps), then the rest.
    cheapest_first = candidates[::-1]
    assert front["trained"] == [cheapest_first[0], *cheapest_first[-1:], *cheapest_first[1:-1]]
    assert not front["selected"]["met"] and front["selected"]["closest"] in candidates


def test_needed_stops_at_the_fronts_time_cap(fronted, tmp_path, monkeypatch):
    # max_cost 1: search plus front within one search plus one retraining, so after the
    # first retraining (always allowed: it is that one) nothing more fits.
    _keeps_nothing(fronted)
    front = _needed(fronted, tmp_path, monkeypatch, "run.keep=1", "front.max_cost=1")
    candidates = [s for s in front["students"] if s["dominated_by"] is None]
    if len(candidates) < 2:
        pytest.skip("this tiny search has one candidate")
    assert front["trained"] == [candidates[-1]["budget"]]  # the cheapest
    assert front["max_cost"] == 1 and front["retrain"] == "needed"
    for s in candidates[:-1]:
        assert not s["retrained"] and "over the front's time cap" in s["not_retrained"]
        assert "1 x (search + one retraining)" in s["not_retrained"]
    assert front["selected"]["closest"] == candidates[-1]["budget"]


def test_needed_with_a_budget_alone_retrains_every_candidate_within_it(
    fronted, tmp_path, monkeypatch
):
    whole = _read(fronted)
    candidates = [s for s in whole["students"] if s["dominated_by"] is None]
    if len(candidates) < 2:
        pytest.skip("this tiny search has one candidate")
    bound = candidates[1]["budget"]  # the second dearest: the dearest is over it
    sets = ("run.keep=null", f"run.select_budget={bound}", "front.max_cost=null")
    front = _needed(fronted, tmp_path, monkeypatch, *sets)
    assert front["trained"] == [s["budget"] for s in candidates[1:]]  # dearest first
    dearest = next(s for s in front["students"] if s["budget"] == candidates[0]["budget"])
    assert not dearest["retrained"] and "over the budget" in dearest["not_retrained"]
