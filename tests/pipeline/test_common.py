"""What every stage shares: run directories pinned to their data and configuration,
read-only finished runs, training time over resumes, and damaged files named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adarec.data.synthetic import make_synthetic
from adarec.errors import UserError
from adarec.pipeline.evaluate import evaluate_run
from adarec.pipeline.teacher import train_teacher
from adarec.serve.export import export_run
from adarec.serve.predictor import Predictor
from tests.conftest import tiny_config


def write_log(path: Path, reverse: bool = False) -> Path:
    """A CSV interaction log of synthetic users (rows reversed: the same rows re-ordered)."""
    raw = make_synthetic(30, 20, 12, seed=1)
    rows = [
        f"{u},{i},{int(t)}" for u, i, t in zip(raw.users, raw.items, raw.timestamps, strict=True)
    ]
    rows = rows[::-1] if reverse else rows
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    return path


def drop_latest_row(path: Path) -> None:
    """Remove the latest interaction of a frequent item: the item catalogue stays the same,
    one user's sequence changes."""
    header, *rows = path.read_text().splitlines()
    counts: dict[str, int] = {}
    for row in rows:
        item = row.split(",")[1]
        counts[item] = counts.get(item, 0) + 1
    frequent = [r for r in rows if counts[r.split(",")[1]] > 6]
    latest = max(frequent, key=lambda r: int(r.split(",")[2]))
    rows.remove(latest)
    path.write_text("\n".join([header, *rows]) + "\n")


def interrupt(run: Path) -> None:
    """Make a finished run look as if it was killed before its end."""
    (run / "metrics.json").unlink()


def test_other_data_is_refused_by_evaluate_and_resume_but_serving_keeps_the_run(tmp_path: Path):
    data = write_log(tmp_path / "log.csv")
    cfg = tiny_config(f"data.dataset={data}", "model.name=sasrec", "train.epochs=1")
    run = tmp_path / "run"
    saved = train_teacher(cfg, run, quiet=True)
    assert len(json.loads((run / "data.json").read_text())["fingerprint"]) == 64
    assert evaluate_run(run)["test"] == saved["test"]  # the same data: the same numbers

    evaluation = (run / "evaluation.json").read_bytes()
    history = ["1", "2", "3"]
    served = [Predictor.from_run(run).recommend(h, k=3) for h in (history, [])]

    write_log(data, reverse=True)  # the same rows in another order: other sequences
    differs = "data differs from what .* was trained on"
    with pytest.raises(UserError, match=differs):
        evaluate_run(run)
    assert (run / "evaluation.json").read_bytes() == evaluation  # no wrong numbers written
    # Serving reads only what the run wrote when it trained (ids, popularity): the edited
    # file changes nothing there.
    assert [Predictor.from_run(run).recommend(h, k=3) for h in (history, [])] == served
    export = export_run(run, "onnx", tmp_path / "export")
    assert Predictor.from_run(export).recommend(history, k=3)["items"] == served[0]["items"]
    interrupt(run)
    with pytest.raises(UserError, match=differs):
        train_teacher(cfg, run, quiet=True, resume=True)


def test_resume_refuses_a_config_that_changes_the_model(tmp_path: Path):
    run = tmp_path / "run"
    train_teacher(tiny_config("model.name=sasrec", "train.epochs=1"), run, quiet=True)
    interrupt(run)
    before = (run / "config.yaml").read_bytes()
    bigger = tiny_config("model.name=sasrec", "train.epochs=2", "model.hidden_size=32")
    with pytest.raises(UserError, match=r"model.hidden_size \(16 -> 32\)"):
        train_teacher(bigger, run, quiet=True, resume=True)
    assert (run / "config.yaml").read_bytes() == before  # nothing was written
    # More epochs are what a resume is for: allowed.
    train_teacher(tiny_config("model.name=sasrec", "train.epochs=2"), run, quiet=True, resume=True)


def test_finished_run_is_read_only_even_with_resume(tmp_path: Path):
    run = tmp_path / "run"
    train_teacher(tiny_config("model.name=pop"), run, quiet=True)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(UserError, match="finished run, which is never changed"):
        train_teacher(tiny_config("model.name=pop"), run, quiet=True, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_train_seconds_add_up_over_resumes(tmp_path: Path):
    run = tmp_path / "run"
    train_teacher(tiny_config("model.name=sasrec", "train.epochs=1"), run, quiet=True)
    interrupt(run)
    # As if the first process had trained for 1000 s before it was killed.
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    state["seconds"] = 1000.0
    torch.save(state, last)
    resumed = train_teacher(
        tiny_config("model.name=sasrec", "train.epochs=2"), run, quiet=True, resume=True
    )
    history = json.loads((run / "history.json").read_text())
    assert resumed["train_seconds"] >= history[-1]["seconds"] > 1000
    assert json.loads((run / "metrics.json").read_text())["train_seconds"] > 1000


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", b"\x80\x04K\x01."])
def test_damaged_last_checkpoint_names_the_file_on_resume(tmp_path: Path, content: bytes):
    run = tmp_path / "run"
    train_teacher(tiny_config("model.name=sasrec", "train.epochs=1"), run, quiet=True)
    interrupt(run)
    (run / "checkpoints" / "last.pt").write_bytes(content)
    with pytest.raises(UserError, match=r"last\.pt .*delete the checkpoints folder"):
        train_teacher(
            tiny_config("model.name=sasrec", "train.epochs=2"), run, quiet=True, resume=True
        )


def test_evaluate_refuses_a_run_whose_data_cannot_be_checked(tmp_path: Path):
    """Issue 29 (5): without data.json, evaluate compared the item ids only and scored an
    edited file (same items, other rows) as if it were the run's data."""
    data = write_log(tmp_path / "log.csv")
    run = tmp_path / "run"
    train_teacher(tiny_config(f"data.dataset={data}", "model.name=sasrec"), run, quiet=True)
    (run / "data.json").unlink()  # a run from before fingerprints were kept
    drop_latest_row(data)  # the same items, other sequences
    with pytest.raises(UserError, match="no fingerprint of the data it was trained on"):
        evaluate_run(run)
    assert not (run / "evaluation.json").exists()
    write_log(data)  # even the original file cannot be told from an edited one
    with pytest.raises(UserError, match="no fingerprint"):
        evaluate_run(run)


def test_evaluate_rebuilds_the_fingerprint_of_regenerated_data(tmp_path: Path):
    """A synthetic dataset is generated from the run's configuration: its fingerprint is
    rebuilt, equal to the one the run wrote."""
    run = tmp_path / "run"
    saved = train_teacher(tiny_config("model.name=sasrec", "train.epochs=1"), run, quiet=True)
    record = json.loads((run / "data.json").read_text())
    (run / "data.json").unlink()
    assert evaluate_run(run)["test"]["full"] == saved["test"]["full"]
    assert json.loads((run / "data.json").read_text()) == record
