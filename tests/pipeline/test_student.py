"""Retraining the derived student: damaged files of the search end in one message naming them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adarec.config import parse_budget
from adarec.errors import UserError
from adarec.nas.genotype import genotype_to_dict, load_genotype
from adarec.pipeline.search import run_search
from adarec.pipeline.student import (
    cost_model_of_search,
    rederived_cost_model,
    rederived_genotype,
    run_student,
)
from adarec.pipeline.teacher import train_teacher
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
