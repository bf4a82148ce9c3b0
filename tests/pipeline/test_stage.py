"""StageRun: what every stage does before and after its own part, written once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adarec.errors import UserError
from adarec.pipeline.stage import StageRun
from adarec.pipeline.teacher import train_teacher
from adarec.registry import build_model
from adarec.runs import load_run_model
from adarec.train.supervised import SupervisedStage
from tests.conftest import tiny_config


def test_a_stage_sets_up_trains_twice_and_finishes(tmp_path: Path):
    cfg = tiny_config("model.name=sasrec", "train.epochs=1")
    run_dir = tmp_path / "run"
    run = StageRun(cfg, run_dir, resume=False, quiet=True)
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "items.json", "data.json"}
    model = build_model(cfg.model, run.data.data.num_items, cfg.data.max_len)
    for loop in ("first", "second"):  # as BERT4Rec pretrains, then fine-tunes
        stage = SupervisedStage(model, cfg.train, run.device, cfg.amp)
        run.train(stage, cfg.train, loop, run_dir=run_dir / loop)
    metrics = run.finish(model, "twice", "trained twice", extra={"note": "x"})
    assert metrics["epochs"] == 2 and metrics["model"] == "twice" and metrics["note"] == "x"
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert (run_dir / "curves.png").stat().st_size > 0
    assert load_run_model(run_dir)[1] == model.to_spec()


def test_a_stage_refuses_other_data_than_the_run_it_follows(tmp_path: Path):
    train_teacher(tiny_config("model.name=pop"), tmp_path / "teacher", quiet=True)
    other = tiny_config("model.name=pop", "data.synthetic_items=25")
    with pytest.raises(UserError, match="another dataset or preprocessing"):
        StageRun(other, tmp_path / "next", False, True, data_of=tmp_path / "teacher")
    assert not (tmp_path / "next" / "items.json").exists()


def test_other_items_of_the_same_count_are_named_not_counted(tmp_path: Path):
    from types import SimpleNamespace

    from adarec.pipeline.common import check_same_data

    (tmp_path / "items.json").write_text(json.dumps(["<pad>", "a", "b", "c"]))
    here = SimpleNamespace(data=SimpleNamespace(item_ids=["<pad>", "a", "c", "b"], num_items=3))
    with pytest.raises(UserError) as caught:
        check_same_data(tmp_path, here)
    message = str(caught.value)
    assert "3 items in both, but item 2 is 'b' there and 'c' here" in message
    assert "here 3" not in message
    fewer = SimpleNamespace(data=SimpleNamespace(item_ids=["<pad>", "a"], num_items=1))
    with pytest.raises(UserError, match=r"\(3 items, here 1\)"):
        check_same_data(tmp_path, fewer)


def test_a_search_refuses_a_teacher_whose_metrics_are_damaged(tmp_path: Path):
    from adarec.pipeline.search import run_search

    cfg = tiny_config("model.name=sasrec", "train.epochs=1")
    train_teacher(cfg, tmp_path / "teacher", quiet=True)
    (tmp_path / "teacher" / "metrics.json").write_text('{"dataset": "synthetic"')
    with pytest.raises(UserError, match="metrics.json is damaged: not valid JSON"):
        run_search(cfg, tmp_path / "search", tmp_path / "teacher", quiet=True)
    assert not (tmp_path / "search").exists()
