"""Teacher runs end to end on synthetic data: files, metrics contract, resume, refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adarec.errors import UserError
from adarec.pipeline.evaluate import evaluate_run
from adarec.pipeline.teacher import train_teacher
from adarec.runs import load_run_model
from tests.conftest import tiny_config

METRIC_KEYS = {f"{m}@{k}" for m in ("NDCG", "HR", "MRR") for k in (1, 5, 10, 20)}


@pytest.mark.parametrize("name", ["nextitnet", "sasrec", "bert4rec", "pop"])
def test_teacher_run_writes_the_contract(tmp_path: Path, name: str):
    run = tmp_path / name
    metrics = train_teacher(tiny_config(f"model.name={name}"), run, quiet=True)
    for file in ("config.yaml", "log.txt", "metrics.json", "model.pt", "items.json", "data.json"):
        assert (run / file).exists(), file
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["dataset"] == "synthetic" and saved["model"] == name
    for split in ("valid", "test"):
        for protocol in ("full", "sampled"):
            assert set(saved[split][protocol]) == METRIC_KEYS
    assert set(saved["params"]) == {"total", "body"}
    assert {"train_seconds", "epochs"} <= set(saved)
    if name != "pop":
        assert (run / "curves.png").stat().st_size > 0
        assert saved["params"]["body"] > 0
    model, spec = load_run_model(run)
    if name == "bert4rec":
        assert model.causal and (run / "pretrain" / "checkpoints" / "last.pt").exists()
        loops = [json.loads((d / "history.json").read_text()) for d in (run, run / "pretrain")]
        assert saved["epochs"] == sum(len(history) for history in loops)  # both loops count
    again = evaluate_run(run)
    assert again["test"] == saved["test"]


def test_sequential_teacher_beats_popularity_on_planted_patterns(tmp_path: Path):
    overrides = ["train.epochs=12", "data.synthetic_users=120", "train.lr=0.005"]
    pop = train_teacher(tiny_config("model.name=pop", *overrides), tmp_path / "pop", quiet=True)
    sas = train_teacher(tiny_config("model.name=sasrec", *overrides), tmp_path / "s", quiet=True)
    assert sas["test"]["full"]["NDCG@10"] > 1.5 * pop["test"]["full"]["NDCG@10"]


def test_finished_run_is_not_overwritten(tmp_path: Path):
    cfg = tiny_config("model.name=pop")
    train_teacher(cfg, tmp_path / "r", quiet=True)
    before = (tmp_path / "r" / "metrics.json").read_text()
    with pytest.raises(UserError, match="--resume"):
        train_teacher(cfg, tmp_path / "r", quiet=True)
    assert (tmp_path / "r" / "metrics.json").read_text() == before


def test_resume_finishes_an_interrupted_run(tmp_path: Path):
    run = tmp_path / "r"
    train_teacher(tiny_config("model.name=sasrec", "train.epochs=1"), run, quiet=True)
    (run / "metrics.json").unlink()  # as if it was killed before the end
    metrics = train_teacher(
        tiny_config("model.name=sasrec", "train.epochs=2"), run, quiet=True, resume=True
    )
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert metrics["epochs"] == 2


def test_excluded_seen_test_metrics_are_evaluated_once(tmp_path: Path, monkeypatch):
    import adarec.pipeline.evaluate as evaluate_module

    run = tmp_path / "sasrec"
    train_teacher(tiny_config("model.name=sasrec"), run, quiet=True)
    evaluate_run(run)  # an evaluation.json without seen items excluded is not reused
    first = evaluate_module.excluded_seen_test(run)
    assert first["exclude_seen"] is True
    # Once written, the excluded-seen metrics are read back, not computed again.
    monkeypatch.setattr(evaluate_module, "evaluate_run", lambda *a, **k: pytest.fail("again"))
    assert evaluate_module.excluded_seen_test(run) == json.loads(json.dumps(first))


@pytest.mark.parametrize("name", ["sasrec", "nextitnet", "pop"])
def test_a_phase_is_for_bert4rec_only(tmp_path: Path, name: str, capsys):
    from adarec.cli import main

    with pytest.raises(UserError, match=f"--phase pretrain is for bert4rec.*{name} trains"):
        train_teacher(tiny_config(f"model.name={name}"), tmp_path / "run", phase="pretrain")
    with pytest.raises(UserError, match="unknown phase 'warmup'"):
        train_teacher(tiny_config("model.name=bert4rec"), tmp_path / "run", phase="warmup")
    argv = ["teacher", "--model", name, "--dataset", "synthetic", "--phase", "finetune"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "--phase finetune is for bert4rec" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
