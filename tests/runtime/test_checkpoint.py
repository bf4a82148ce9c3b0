"""Checkpoints on a full disk: one UserError naming the file, the run resumable."""

import errno
from pathlib import Path

import pytest

from adarec import io as adarec_io
from adarec.errors import UserError
from adarec.io import read_json
from adarec.pipeline import teacher
from tests.serve.conftest import tiny_config


def test_a_full_disk_while_checkpointing_stops_the_run_resumably(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAREC_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny_config("model.name=sasrec", "train.epochs=2", "train.patience=0")
    out = tmp_path / "teacher"
    written = adarec_io._write_file
    saves: list[str] = []

    def full_on_the_second_epoch(path: Path, data) -> None:
        name = Path(path).name
        if name.startswith(".last.pt."):
            saves.append(name)
            if len(saves) == 2:
                written(path, data[: len(data) // 2])  # the disk fills part way through
                raise OSError(errno.ENOSPC, "No space left on device")
        written(path, data)

    monkeypatch.setattr(adarec_io, "_write_file", full_on_the_second_epoch)
    with pytest.raises(UserError) as caught:
        teacher.train_teacher(cfg, out, quiet=True)
    message = str(caught.value)
    assert f"cannot write {out / 'checkpoints' / 'last.pt'}: No space left on device" in message
    assert "--resume" in message
    assert not list((out / "checkpoints").glob(".*.tmp"))  # nothing half-written

    monkeypatch.setattr(adarec_io, "_write_file", written)  # space freed
    teacher.train_teacher(cfg, out, quiet=True, resume=True)
    assert [h["epoch"] for h in read_json(out / "history.json")] == [0, 1]
