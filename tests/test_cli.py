"""The command line: user mistakes give one clear message and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adarec.cli import main


def test_data_stats_prints_a_table(capsys):
    assert main(["data", "stats", "synthetic", "--set", "data.synthetic_users=40", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "users" in out and "40" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "stats", "no-such-dataset"], "ml-100k"),
        (["data", "stats", "synthetic", "--set", "data.max_lenn=5"], "did you mean 'data.max_len'"),
        (
            ["teacher", "--model", "sasrec", "--dataset", "synthetic", "--config", "/nope.yaml"],
            "not found",
        ),
        (["evaluate", "/no/such/run"], "not an adarec run directory"),
        (["data", "stats", "synthetic", "--config", "/"], "config file / is a directory"),
        (["data", "stats", "/"], "data file / is a directory"),
        (["search", "--teacher", "/no/such/run"], "not an adarec run directory"),
    ],
)
def test_user_errors_exit_2_with_one_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("adarec: error:")


def test_bad_data_file_names_the_line(tmp_path: Path, capsys):
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts\nu1,i1,100\nu1,i2,oops\n")
    argv = [
        "data",
        "stats",
        str(path),
        "--set",
        "data.format=csv",
        "--set",
        "data.user_col=user",
        "--set",
        "data.item_col=item",
        "--set",
        "data.time_col=ts",
    ]
    assert main(argv) == 2
    assert "line 3" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "adarec", "--help"], capture_output=True, text=True, check=True
    )
    assert "teacher" in result.stdout and "search" in result.stdout


def test_out_that_is_a_file_is_one_message(tmp_path: Path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for out in (taken, taken / "run"):
        argv = ["teacher", "--model", "pop", "--dataset", "synthetic", "--out", str(out)]
        assert main(argv + ["--quiet"]) == 2
        err = capsys.readouterr().err
        assert "a file is in the way" in err and "Traceback" not in err
    assert taken.read_text() == "mine"


def test_unreadable_cache_folder_is_one_message(tmp_path: Path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ADAREC_CACHE_DIR", str(blocker / "cache"))
    assert main(["data", "stats", "synthetic", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "data cache folder" in err and "Traceback" not in err


def _tiny_teacher_argv(out: Path) -> list[str]:
    from tests.serve.conftest import TINY

    sets = [arg for item in TINY for arg in ("--set", item)]
    return ["teacher", "--model", "sasrec", "--out", str(out), "--quiet", *sets]


def test_resume_with_an_unreadable_checkpoints_folder_is_one_message(
    tmp_path: Path, monkeypatch, capsys
):
    import errno
    import os

    monkeypatch.setenv("ADAREC_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "teacher"
    assert main(_tiny_teacher_argv(out)) == 0
    (out / "metrics.json").unlink()  # interrupted before it finished
    checkpoints = str(out / "checkpoints")
    stat = os.stat

    def unreadable(path, *args, **kwargs):
        # chmod 000 does not stop root (these tests may run as root): refuse as the file
        # system would for another user.
        if os.fspath(path).startswith(checkpoints + os.sep):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", unreadable)
    capsys.readouterr()
    assert main([*_tiny_teacher_argv(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adarec: error:") and "Traceback" not in err
    assert checkpoints in err and "Permission denied" in err
