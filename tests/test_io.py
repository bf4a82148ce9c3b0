"""File helpers: user paths that cannot be read or written end in one UserError naming them."""

import tempfile
from pathlib import Path

import pytest

from adarec.errors import UserError
from adarec.io import atomic_write_text, check_file, read_json, read_text, writable_dir


def test_check_file_names_what_is_wrong(tmp_path: Path):
    with pytest.raises(UserError, match="data file not found"):
        check_file(tmp_path / "none", "data file")
    with pytest.raises(UserError, match="is a directory"):
        check_file(tmp_path, "data file")
    (tmp_path / "empty").write_text("")
    check_file(tmp_path / "empty", "data file")
    with pytest.raises(UserError, match="is empty"):
        check_file(tmp_path / "empty", "data file", allow_empty=False)


def test_unreadable_and_binary_files(tmp_path: Path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="not UTF-8"):
        read_text(path, "config file")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)  # root reads everything: simulate a refusal
    with pytest.raises(UserError, match="cannot read config file .*Permission denied"):
        read_text(path, "config file")


def test_writable_dir(tmp_path: Path, monkeypatch):
    assert writable_dir(tmp_path / "a" / "b", "run directory").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"a file is in the way \(.*file\)"):
        writable_dir(tmp_path / "file" / "run", "run directory")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # a read-only folder, as root cannot have
    with pytest.raises(UserError, match="cannot write to run directory .*Permission denied"):
        writable_dir(tmp_path, "run directory")


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(UserError, match="cannot write"):
        atomic_write_text(tmp_path / "x.json" / "inner", "new")  # a file where a folder is
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


@pytest.mark.parametrize("content", [b"", b"{", b"\xff", b"[1]"])
def test_read_json_names_a_damaged_file(tmp_path: Path, content: bytes):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"metrics\.json is damaged.*; re-run"):
        read_json(path, dict, "re-run")
    with pytest.raises(UserError, match="does not exist; re-run"):
        read_json(tmp_path / "none.json", dict, "re-run")
