"""Retraining the derived student: damaged files of the search end in one message naming them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adarec.errors import UserError
from adarec.pipeline.search import run_search
from adarec.pipeline.student import run_student
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
