"""``adarec run`` on an existing --out: a finished stage is reused only when it ran with the
settings and data asked for (issue 29, 1), and a budget the search would refuse is refused
before the teacher trains (issue 29, 14)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from adarec.errors import UserError
from adarec.nas.budget import model_cost
from adarec.pipeline.run import run_pipeline
from adarec.pipeline.teacher import train_teacher
from adarec.registry import build_model
from tests.conftest import tiny_config
from tests.pipeline.test_common import drop_latest_row, interrupt, write_log

FAST = ["model.name=sasrec", "train.epochs=1", "search.epochs=1", "student.epochs=1"]
PIPELINE = [*FAST, "run.front=false"]


def _stamps(out: Path) -> dict[str, int]:
    """metrics.json's modification time of every stage (a re-trained stage rewrites it)."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("metrics.json")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reuse") / "run"
    run_pipeline(tiny_config(*PIPELINE), out, baselines=["pop"], quiet=True)
    return out


@pytest.fixture
def out(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


@pytest.mark.parametrize(
    ("change", "stage", "named"),
    [
        ("train.epochs=2", "teacher", r"train.epochs \(1 -> 2\)"),
        ("model.hidden_size=32", "teacher", r"model.hidden_size \(16 -> 32\)"),
        ("data.synthetic_users=70", "teacher", r"data.synthetic_users \(60 -> 70\)"),
        ("search.budget=3x", "search", r"search.budget \('5x' -> '3x'\)"),
        # The search distils: its objective's settings are the search's too.
        ("distill.gamma=0.3", "search", r"distill.gamma \(0.5 -> 0.3\)"),
        ("student.lr=0.01", "student", r"student.lr \(0.0001 -> 0.01\)"),
    ],
)
def test_a_rerun_with_other_settings_is_refused_naming_them(out, change, stage, named):
    """Issue 29 (1): the old results were reported for the new settings, exit 0."""
    before = _stamps(out), (out / "report.json").read_bytes()
    with pytest.raises(UserError, match=rf"{out / stage} holds a finished stage .*{named}"):
        run_pipeline(tiny_config(*PIPELINE, change), out, baselines=["pop"], quiet=True)
    assert (_stamps(out), (out / "report.json").read_bytes()) == before


def test_a_rerun_that_changes_only_measurement_reuses_every_stage(out):
    before = _stamps(out)
    measured = ["eval.ks=[5,10]", "bench.repeats=3", "run.random_cells=4"]
    run_pipeline(tiny_config(*PIPELINE, *measured), out, baselines=["pop"], quiet=True)
    assert _stamps(out) == before


def test_sampling_settings_that_never_applied_do_not_block_reuse_or_resume(out):
    """The tiny catalogue is below sampled_softmax.min_items: every stage trained on the
    full softmax, and would again under other sampling settings (a changed default)."""
    before = _stamps(out)
    unused = ["sampled_softmax.negatives=77", "sampled_softmax.proposal=uniform"]
    run_pipeline(tiny_config(*PIPELINE, *unused), out, baselines=["pop"], quiet=True)
    assert _stamps(out) == before  # every stage reused
    interrupt(out / "search")
    run_pipeline(tiny_config(*PIPELINE, *unused), out, baselines=["pop"], quiet=True)
    assert "search/metrics.json" in _stamps(out)  # resumed and finished
    # Sampling that would apply now (min_items below the catalogue) is a real change.
    with pytest.raises(UserError, match=r"teacher holds a finished stage .*min_items"):
        run_pipeline(
            tiny_config(*PIPELINE, "sampled_softmax.min_items=0"),
            out,
            baselines=["pop"],
            quiet=True,
        )


def as_saved_before_the_distill_section(out: Path) -> None:
    """Rewrite every config.yaml under ``out`` as adarec wrote it before the distill
    section: the objective's keys in the search section."""
    for path in out.rglob("config.yaml"):
        saved = yaml.safe_load(path.read_text())
        saved["search"].update(saved.pop("distill"))
        path.write_text(yaml.safe_dump(saved, sort_keys=False))


def test_a_run_saved_before_the_distill_section_is_reused_and_resumed(out):
    as_saved_before_the_distill_section(out)
    before = _stamps(out)
    run_pipeline(tiny_config(*PIPELINE), out, baselines=["pop"], quiet=True)
    assert _stamps(out) == before  # every stage reused
    # An old run changed under the old name is refused, naming the new key.
    with pytest.raises(UserError, match=r"search holds a finished stage .*distill.gamma"):
        run_pipeline(tiny_config(*PIPELINE, "search.gamma=0.3"), out, baselines=["pop"], quiet=True)
    interrupt(out / "search")  # the search resumes from its last checkpoint
    with pytest.raises(UserError, match=r"--resume: .*distill.gamma \(0.5 -> 0.3\)"):
        run_pipeline(tiny_config(*PIPELINE, "search.gamma=0.3"), out, baselines=["pop"], quiet=True)
    run_pipeline(tiny_config(*PIPELINE), out, baselines=["pop"], quiet=True)
    after = _stamps(out)
    assert "search/metrics.json" in after  # the search finished from its checkpoint
    del after["search/metrics.json"], before["search/metrics.json"]
    assert after == before  # and every other stage was reused


def test_a_rerun_on_edited_data_is_refused(tmp_path):
    data = write_log(tmp_path / "log.csv")
    cfg = tiny_config(*PIPELINE, f"data.dataset={data}")
    run_pipeline(cfg, tmp_path / "run", baselines=[], quiet=True)
    drop_latest_row(data)  # the same settings, other rows
    with pytest.raises(UserError, match="data differs from what .*teacher was trained on"):
        run_pipeline(cfg, tmp_path / "run", baselines=[], quiet=True)


def test_a_finished_search_of_another_teacher_is_refused(tmp_path):
    cfg = tiny_config(*PIPELINE)
    for name in ("a", "b"):
        train_teacher(cfg, tmp_path / name, quiet=True)
    run_pipeline(cfg, tmp_path / "run", teacher_dir=tmp_path / "a", baselines=[], quiet=True)
    before = _stamps(tmp_path / "run")
    run_pipeline(cfg, tmp_path / "run", teacher_dir=tmp_path / "a", baselines=[], quiet=True)
    assert _stamps(tmp_path / "run") == before  # the same teacher: every stage reused
    with pytest.raises(UserError, match=r"finished search of another teacher \(.*a, not .*b\)"):
        run_pipeline(cfg, tmp_path / "run", teacher_dir=tmp_path / "b", baselines=[], quiet=True)


def _teacher_macs(cfg) -> float:
    from adarec.data.preprocess import prepare

    num_items = prepare(cfg.data, cfg.seed).num_items
    model = build_model(cfg.model, num_items, cfg.data.max_len)
    return model_cost(model, num_items, cfg.data.max_len, "macs")


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ("1e6x", r"search.budget 1e\+06x .* below the cheapest student"),
        ("teacher_x32", "not below the teacher's cost"),
        ("1000ms", r"1000ms .* not below the teacher's cost"),  # timed on the untrained teacher
    ],
)
def test_a_budget_the_search_would_refuse_is_refused_before_the_teacher_trains(
    tmp_path, budget, message
):
    """Issue 29 (14): the teacher trained first, then the search refused the budget."""
    if budget == "teacher_x32":
        budget = f"{_teacher_macs(tiny_config(*PIPELINE)) * 32:.0f}macs"
    cfg = tiny_config(*PIPELINE, f"search.budget={budget}")
    with pytest.raises(UserError, match=message):
        run_pipeline(cfg, tmp_path / "run", baselines=[], quiet=True)
    assert not (tmp_path / "run" / "teacher").exists()


def test_a_rerun_of_the_front_with_other_student_settings_is_refused(tmp_path):
    """The front (adarec run's default) reuses its estimates and students by cell: only
    those trained with the settings asked for."""
    out = tmp_path / "run"
    front = [*FAST, "run.front=true", "front.budgets=2"]
    run_pipeline(tiny_config(*front), out, baselines=[], quiet=True)
    before = _stamps(out / "front")
    run_pipeline(tiny_config(*front, "run.keep=0.5"), out, baselines=[], quiet=True)
    assert _stamps(out / "front") == before  # another selection: every student reused
    with pytest.raises(UserError, match=r"front.* holds a finished stage .*student.lr"):
        run_pipeline(tiny_config(*front, "student.lr=0.01"), out, baselines=[], quiet=True)
