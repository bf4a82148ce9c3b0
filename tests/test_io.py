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


def test_a_full_disk_is_one_user_error_naming_the_file(tmp_path: Path, monkeypatch):
    import errno

    from adarec import io as adarec_io

    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def full(path, data):
        Path(path).write_bytes(b"par")  # the disk fills part way through
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(adarec_io, "_write_file", full)
    with pytest.raises(UserError) as caught:
        adarec_io.atomic_write_bytes(target, b"new content", hint="rerun with --resume")
    message = str(caught.value)
    assert str(target) in message and "No space left on device" in message
    assert "free some space and run again" in message and message.endswith("--resume")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_atomic_write_removes_temporaries_a_killed_writer_left(tmp_path: Path):
    import os
    import time

    from adarec.io import STALE_SECONDS

    stale = tmp_path / ".plot.png.k1ll3d.tmp"
    recent = tmp_path / ".plot.png.wr1t1ng.tmp"  # maybe another process's, being written
    other = tmp_path / ".other.png.k1ll3d.tmp"  # another file's: not this write's business
    for path in (stale, recent, other):
        path.write_bytes(b"")
    old = time.time() - STALE_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    atomic_write_text(tmp_path / "plot.png", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["plot.png", recent.name, other.name]
    )


# Run in a child process: its file size limit makes writes past LIMIT bytes fail (EFBIG),
# the way a full disk makes them fail (torch's own writers then raise RuntimeError, or abort).
LIMITED = """
import resource, signal
{setup}
from adarec.errors import UserError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    {call}
except UserError as exc:
    print("UserError:", exc)
"""


def run_with_file_size_limit(setup: str, call: str, limit: int = 100_000) -> str:
    """The output of ``call`` (one line of Python, after ``setup``) in a child process that
    cannot write files past ``limit`` bytes; fails on a crash or a traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", LIMITED.format(setup=setup, limit=limit, call=call)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.stdout


def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one(tmp_path: Path):
    from adarec.runtime.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    setup = "import torch; from adarec.runtime.checkpoint import save_checkpoint"
    call = f"save_checkpoint({str(path)!r}, {{'epoch': 2, 'w': torch.zeros(100_000)}})"
    out = run_with_file_size_limit(setup, call)
    assert out.startswith(f"UserError: cannot write {path}: File too large"), out
    assert "free some space" in out and "--resume" in out
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_figure_killed_while_drawn_leaves_no_temporary(tmp_path: Path):
    import subprocess
    import sys

    script = f"""
import os, signal
from pathlib import Path
import matplotlib.pyplot as plt
from matplotlib.artist import Artist
from adarec.plots import save_figure

class Killed(Artist):
    def draw(self, renderer):
        os.kill(os.getpid(), signal.SIGKILL)

fig = plt.figure()
fig.add_artist(Killed())
save_figure(fig, Path({str(tmp_path / "curves.png")!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -9
    assert list(tmp_path.iterdir()) == []
