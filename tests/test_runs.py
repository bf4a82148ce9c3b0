"""Run directory files: every damaged file ends in one UserError naming it, never a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from adarec.cli import main
from adarec.errors import UserError
from adarec.pipeline.teacher import train_teacher
from adarec.runs import has_weights, load_run_config, load_run_model, read_metrics
from tests.conftest import tiny_config

DAMAGE = {
    "empty": b"",
    "truncated": b"PK\x03\x04\x14\x00\x00\x00",
    "random": bytes(range(256)) * 4,
    "other JSON": b'["not", "a", "mapping"]',
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAREC_CACHE_DIR", str(run.parent / "cache"))
        train_teacher(tiny_config("model.name=sasrec", "train.epochs=1"), run, quiet=True)
    return run


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run, free to damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


READERS = {
    "evaluate": ("model.pt", "metrics.json", "config.yaml", "data.json"),
    # Serving reads only what the stage wrote for it, never the data (nor data.json).
    "recommend": ("model.pt", "metrics.json", "items.json", "popularity.json"),
}
CASES = [(command, file) for command, files in READERS.items() for file in files]


@pytest.mark.parametrize(("command", "file"), CASES)
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_run_file_is_named(run: Path, command: str, file: str, damage: str, capsys):
    (run / file).write_bytes(DAMAGE[damage])
    argv = [command, str(run)] + (["--history", "i1,i2"] if command == "recommend" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("adarec: error:") and "Traceback" not in err
    assert str(run / file) in err, err


@pytest.mark.parametrize("filename", ["model.pt", "supernet.pt", "checkpoints/best.pt"])
def test_model_loader_names_a_damaged_file(run: Path, filename: str):
    (run / filename).write_bytes(DAMAGE["random"])
    with pytest.raises(UserError, match="damaged or not an adarec checkpoint"):
        load_run_model(run, filename=filename)


def test_weights_that_do_not_fit_their_spec_are_named(run: Path):
    state = torch.load(run / "model.pt", weights_only=False)
    state["spec"]["model"]["hidden_size"] = 32  # the weights are 16 wide
    torch.save(state, run / "model.pt")
    with pytest.raises(UserError, match=r"model\.pt is damaged \(its weights do not fit"):
        load_run_model(run)


def test_damaged_config_and_metrics_name_the_file(run: Path):
    (run / "config.yaml").write_text("model:\n  hidden_size: [oops\n")
    with pytest.raises(UserError, match=r"config\.yaml is damaged"):
        load_run_config(run)
    (run / "config.yaml").write_text("model:\n  hidden_size: -4\n")
    with pytest.raises(UserError, match=r"config\.yaml is damaged .*model\.hidden_size"):
        load_run_config(run)
    (run / "metrics.json").write_text('{"model": "sasrec"}')
    with pytest.raises(UserError, match=r"metrics\.json is damaged \(no 'dataset'\)"):
        read_metrics(run)


def test_search_names_a_damaged_teacher(run: Path, tmp_path: Path, capsys):
    (run / "model.pt").write_bytes(DAMAGE["truncated"])
    argv = ["search", "--teacher", str(run), "--out", str(tmp_path / "s"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.pt" in err and "Traceback" not in err


def test_has_weights_sees_the_runs_own_weights_only(tmp_path: Path):
    run = tmp_path / "run"
    (run / "search" / "checkpoints").mkdir(parents=True)
    (run / "search" / "supernet.pt").write_bytes(b"x")  # a nested run (an ablation's search)
    (run / "search" / "checkpoints" / "last.pt").write_bytes(b"x")
    assert not has_weights(run)
    for own in ("model.pt", "checkpoints/last.pt", "pretrain/checkpoints/best.pt"):
        other = tmp_path / own.replace("/", "_")
        (other / own).parent.mkdir(parents=True, exist_ok=True)
        (other / own).write_bytes(b"x")
        assert has_weights(other), own
