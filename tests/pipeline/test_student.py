"""Retraining the derived student: damaged files of the search end in one message naming them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adarec.config import parse_budget
from adarec.errors import UserError
from adarec.nas.genotype import genotype_to_dict, load_genotype
from adarec.pipeline.run import run_baseline
from adarec.pipeline.search import run_search
from adarec.pipeline.student import (
    cost_model_of_search,
    rederived_cost_model,
    rederived_genotype,
    run_student,
)
from adarec.pipeline.teacher import train_teacher
from adarec.runs import load_run_config
from tests.conftest import tiny_config

FAST = ["model.name=sasrec", "train.epochs=1", "search.epochs=1", "student.epochs=1"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("searched")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAREC_CACHE_DIR", str(root / "cache"))
        cfg = tiny_config(*FAST)
        train_teacher(cfg, root / "teacher", quiet=True)
        run_search(cfg, root / "search", root / "teacher", quiet=True)
    return root / "search"


@pytest.mark.parametrize(
    ("file", "content", "loss"),
    [
        ("supernet.pt", b"PK\x03\x04", "ce"),
        ("cost_table.json", b'{"method": "macs"}', "ce"),
        ("teacher.json", b"{", "kd"),
    ],
)
def test_damaged_search_file_is_named(searched, tmp_path, file, content, loss):
    search = Path(shutil.copytree(searched, tmp_path / "search"))
    (search / file).write_bytes(content)
    cfg = tiny_config(*FAST, f"student.loss={loss}")
    with pytest.raises(UserError, match=file.replace(".", "[.]")):
        run_student(cfg, tmp_path / "student", search, quiet=True)
    if file != "supernet.pt":  # read before anything is written
        assert not (tmp_path / "student").exists()


def test_student_budget_derives_the_cell_again_within_it(searched, tmp_path):
    base = cost_model_of_search(searched)
    nodes = len(load_genotype(searched / "genotype.json").nodes)
    # Between the search's own 5x and the tightest speed-up the space can meet.
    tightest = base.teacher / base.cheapest(nodes)
    assert tightest > 6
    budget = f"{(5 + tightest) / 2:.4f}x"
    cfg = tiny_config(*FAST, f"student.budget={budget}")
    metrics = run_student(cfg, tmp_path / "student", searched, quiet=True)
    assert metrics["architecture"] == genotype_to_dict(
        rederived_genotype(searched, rederived_cost_model(searched, budget))
    )
    cost = metrics["cost"]["budget"]
    assert cost["budget"] == str(parse_budget(budget)) != base.budget
    assert cost["target"] == pytest.approx(base.teacher / parse_budget(budget).value)
    assert cost["within"]


def test_student_budget_below_the_space_is_refused_before_training(searched, tmp_path):
    base = cost_model_of_search(searched)
    nodes = len(load_genotype(searched / "genotype.json").nodes)
    budget = f"{base.teacher / base.cheapest(nodes) * 2:.4f}x"
    with pytest.raises(UserError, match="below the cheapest student"):
        run_student(tiny_config(*FAST, f"student.budget={budget}"), tmp_path / "s", searched)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["student.budget=100000x"], r"student.budget 100000x .* at most \d+\.\dx\); lower"),
        (["search.use_cost=false", "student.budget=15x"], "this search has none"),
    ],
)
def test_search_refuses_a_student_budget_it_cannot_serve_before_searching(
    searched, tmp_path, overrides, message
):
    teacher = searched.parent / "teacher"
    with pytest.raises(UserError, match=message):
        run_search(tiny_config(*FAST, *overrides), tmp_path / "search", teacher, quiet=True)
    assert not (tmp_path / "search" / "supernet.pt").exists()
    assert not (tmp_path / "search" / "metrics.json").exists()


@pytest.mark.parametrize("max_len", [12, 8])
def test_stages_refuse_a_window_other_than_the_teachers_before_starting(
    searched, tmp_path, max_len
):
    """Issue 29 (9): a longer data.max_len than the teacher's ended in an IndexError in the
    search, a shorter one was distilled unchecked; the search, the retraining with KD and
    the front now refuse it at their start."""
    from adarec.pipeline.front import build_front

    teacher = searched.parent / "teacher"
    cfg = tiny_config(*FAST, f"data.max_len={max_len}")
    message = rf"data.max_len {max_len} differs from the teacher's \(10, in .*data.max_len=10"
    with pytest.raises(UserError, match=message):
        run_search(cfg, tmp_path / "search", teacher, quiet=True)
    kd = tiny_config(*FAST, f"data.max_len={max_len}", "student.loss=kd")
    with pytest.raises(UserError, match=message):
        run_student(kd, tmp_path / "student", searched, quiet=True)
    with pytest.raises(UserError, match=message):
        build_front(cfg, searched, tmp_path / "front", quiet=True)
    assert not any(tmp_path.iterdir())  # nothing written


def test_every_stage_that_distils_reads_the_distill_section(searched, tmp_path):
    """Retraining with student.loss kd, the small_kd baseline and the fixed_mapping row
    take their objective from distill.* (small_kd on its own copy: logit KD alone)."""
    teacher = searched.parent / "teacher"
    kd = tiny_config(*FAST, "student.loss=kd", "distill.use_hid=false", "distill.gamma=0.25")
    run_student(kd, tmp_path / "student", searched, quiet=True)
    (first,) = json.loads((tmp_path / "student" / "history.json").read_text())
    assert first["gamma"] == 0.25
    assert {"ce", "emb", "logit"} <= set(first) and "hid" not in first

    small = tiny_config(*FAST, "train.epochs=2", "distill.gamma=0.25", "distill.gamma_decay=0.5")
    dirs = run_baseline("small_kd", small, tmp_path / "baselines", teacher, searched, True)
    history = json.loads((dirs["small_kd"] / "history.json").read_text())
    assert [h["gamma"] for h in history] == [0.25, 0.25]  # constant: its own gamma_decay 1
    assert all("logit" in h and "emb" not in h and "hid" not in h for h in history)
    saved = load_run_config(dirs["small_kd"])  # the run's settings, not the baseline's copy
    assert saved.distill.use_emb and saved.distill.gamma_decay == 0.5 and saved.search.use_cost

    dirs = run_baseline("fixed_mapping", tiny_config(*FAST), tmp_path, teacher, searched, True)
    search = dirs["fixed_mapping"] / "search"
    assert load_run_config(search).distill.layer_mapping == "skip"
    history = json.loads((search / "history.json").read_text())
    assert history and not any("emd_student_weights" in h for h in history)
