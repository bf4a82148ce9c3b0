"""The one training loop: determinism, resume, early stopping, best-weight restore."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from adarec.errors import UserError
from adarec.pipeline.common import load_stage_data
from adarec.registry import build_model
from adarec.runtime.seed import seed_everything
from adarec.train.loop import TrainingContext, run_training
from adarec.train.supervised import SupervisedStage, next_item_batch
from tests.conftest import tiny_config


def _train(run_dir: Path, epochs: int, resume: bool = False, **loop_overrides):
    cfg = tiny_config(f"train.epochs={epochs}", "model.name=sasrec")
    for key, value in loop_overrides.items():
        setattr(cfg.train, key, value)
    seed_everything(cfg.seed)
    data = load_stage_data(cfg)
    model = build_model(cfg.model, data.data.num_items, cfg.data.max_len)
    stage = SupervisedStage(model, cfg.train, torch.device("cpu"))
    context = TrainingContext(
        run_dir, data.valid, cfg.eval, cfg.seed, torch.device("cpu"), quiet=True, resume=resume
    )
    result = run_training(stage, cfg.train, data.train, context)
    return model, result


def test_same_seed_same_weights(tmp_path: Path):
    a, _ = _train(tmp_path / "a", 2)
    b, _ = _train(tmp_path / "b", 2)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_resume_continues_exactly(tmp_path: Path, caplog):
    # Early stopping off and no best-restore difference: compare the last epoch's weights.
    full, full_result = _train(tmp_path / "full", 3, patience=0)
    _train(tmp_path / "part", 2, patience=0)
    with caplog.at_level(logging.INFO, logger="adarec"):
        resumed, resumed_result = _train(tmp_path / "part", 3, resume=True, patience=0)
    # The log names the last finished epoch as the epoch lines number it (1-based).
    assert "resumed after epoch 2 from" in caplog.text
    assert resumed_result.epochs == 3 == full_result.epochs
    last = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=False)
    last_resumed = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=False)
    for key, value in last["model"].items():
        assert torch.allclose(value, last_resumed["model"][key], atol=1e-6), key
    assert [h["loss"] for h in full_result.history] == [h["loss"] for h in resumed_result.history]


def test_early_stopping_restores_best_epoch(tmp_path: Path):
    model, result = _train(tmp_path / "es", 8, patience=1, lr=0.05)
    values = [h["valid"]["full"]["NDCG@10"] for h in result.history]
    best = max(range(len(values)), key=values.__getitem__)
    assert result.best_epoch == best + 1
    if result.epochs < 8:  # stopped early: exactly `patience` epochs after the best
        assert result.epochs == best + 2
    saved = torch.load(tmp_path / "es" / "checkpoints" / "best.pt", weights_only=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key


def test_first_window_item_is_never_a_target():
    window = torch.tensor([[0, 0, 5, 6, 7]])
    inputs, targets = next_item_batch(window, 0, 0)
    assert inputs.tolist() == [[0, 0, 5, 6]]
    assert targets.tolist() == [[0, 0, 6, 7]]


def test_diverged_training_stops_with_one_error_and_no_finished_mark(tmp_path: Path):
    """Issue 29 (4): a NaN loss used to train on to "finished" metrics of 0.0."""
    with pytest.raises(UserError, match=r"diverged in epoch 1 \(not finite: loss nan"):
        _train(tmp_path / "nan", 2, lr=1e30)
    # Nothing of the diverged epoch was saved: no checkpoint, no history.
    assert not (tmp_path / "nan" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "nan" / "history.json").exists()


def test_weights_gone_non_finite_keep_the_last_finite_epoch(tmp_path: Path, monkeypatch):
    """Non-finite weights stop the loop in the epoch they appear; the checkpoint of the
    epoch before stays, and a resume continues from it."""
    original = SupervisedStage.on_epoch_start

    def poison(self, epoch):
        if epoch == 1:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return original(self, epoch)

    monkeypatch.setattr(SupervisedStage, "on_epoch_start", poison)
    with pytest.raises(UserError, match=r"diverged in epoch 2 \(not finite: .*weights"):
        _train(tmp_path / "inf", 3, patience=0)
    last = torch.load(tmp_path / "inf" / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    monkeypatch.setattr(SupervisedStage, "on_epoch_start", original)
    _, result = _train(tmp_path / "inf", 3, resume=True, patience=0)
    assert result.epochs == 3


def test_a_diverged_stage_is_not_finished_and_can_be_trained_again(tmp_path: Path):
    """The stage's run directory stays open: no metrics.json (a finished run would be
    read-only), and the same command with a sane learning rate then trains it."""
    from adarec.pipeline.teacher import train_teacher

    run = tmp_path / "teacher"
    with pytest.raises(UserError, match="training diverged"):
        train_teacher(tiny_config("model.name=sasrec", "train.lr=1e30"), run, quiet=True)
    assert not (run / "metrics.json").exists()
    metrics = train_teacher(tiny_config("model.name=sasrec"), run, quiet=True, resume=True)
    assert metrics["test"]["full"]["NDCG@10"] > 0
