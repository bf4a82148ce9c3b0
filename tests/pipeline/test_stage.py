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
