"""File helpers: atomic writes (temporary file beside the target, then rename), and checks
that turn an unusable user path into one UserError naming it."""

from __future__ import annotations

import errno
import glob
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adarec.errors import UserError

# A write that failed for want of room: the disk is full, the quota or the file size limit
# reached. Freeing space and running again is what helps.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_file(path: Path, what: str, allow_empty: bool = True) -> Path:
    """``path`` is a readable regular file (non-empty unless ``allow_empty``), or UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a regular file")
    try:
        with path.open("rb") as fh:
            first = fh.read(1)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {_reason(exc)}") from None
    if not first and not allow_empty:
        raise UserError(f"{what} {path} is empty")
    return path


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a file, or UserError naming it (missing, a folder, unreadable, binary)."""
    path = check_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {_reason(exc)}") from None


def refuse_broken_link(path: Path, what: str) -> None:
    """UserError if ``path`` is a symbolic link that leads nowhere (dangling, or a loop):
    ``exists()`` calls it missing, and creating or renaming onto it then fails."""
    if os.path.islink(path) and not os.path.exists(path):
        raise UserError(
            f"{what}: {path} is a symbolic link that leads nowhere (dangling, or a loop); "
            "remove it or choose another path"
        )


def writable_dir(path: Path, what: str) -> Path:
    """Create the folder ``path`` if needed and check that files can be written in it."""
    path = Path(path)
    for existing in (path, *path.parents):
        refuse_broken_link(existing, f"{what} {path}")
        if existing.exists():
            if not existing.is_dir():
                where = "" if existing == path else f" ({existing})"
                raise UserError(f"{what} {path}: a file is in the way{where}; choose another path")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Permission bits do not tell (root, read-only mounts): try a real file.
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write to {what} {path}: {_reason(exc)}") from None
    return path


def atomic_write(path: Path, write: Callable[[Path], None], hint: str = "") -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` only if it succeeded.

    A file system error (no space, no permission, a file where a folder should be) is a
    UserError naming ``path`` and the cause (then ``hint``, e.g. how to resume); the earlier
    content of ``path`` is kept. ``write`` must raise OSError when a write fails: serialise
    with a library that raises something else (torch's writers) through ``atomic_write_bytes``.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.replace(tmp, path)
        remove_stale_temporaries(path)
    except BaseException as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(write_error(path, exc, hint)) from None
        raise


# A temporary file of ``atomic_write`` this old belongs to a process that was killed
# (writes take milliseconds to seconds; the slow serialising happens before it exists).
STALE_SECONDS = 3600


def remove_stale_temporaries(path: Path) -> None:
    """Remove ``atomic_write``'s temporary files of ``path`` (``.NAME.*.tmp``) that a killed
    process left more than STALE_SECONDS ago."""
    now = time.time()
    for tmp in Path(path).parent.glob(f"{glob.escape('.' + Path(path).name)}.*.tmp"):
        try:
            if tmp.is_file() and now - tmp.stat().st_mtime > STALE_SECONDS:
                tmp.unlink()
        except OSError:
            pass  # gone already, or not ours to remove: harmless either way


def write_error(path: Path, exc: OSError, hint: str = "") -> str:
    """The message of a failed write of ``path``: the file, the cause, what to do."""
    message = f"cannot write {path}: {_reason(exc)}"
    if exc.errno in NO_SPACE:
        message += "; free some space and run again"
    return f"{message}; {hint}" if hint else message


def atomic_write_bytes(path: Path, data: bytes | memoryview, hint: str = "") -> None:
    """``atomic_write`` of bytes serialised beforehand (in memory): a full disk is then an
    OSError of this write, where torch's own file writers raise RuntimeError or abort."""
    atomic_write(path, lambda tmp: _write_file(tmp, data), hint)


def _write_file(path: Path, data: bytes | memoryview) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, expect: type | None = None, hint: str = "") -> Any:
    """A JSON file's content (of type ``expect`` when given), or UserError naming the file.

    ``hint`` says what to do about a missing or damaged file (e.g. "re-run the stage").
    """
    path = Path(path)
    advice = f"; {hint}" if hint else ""
    if not path.is_file():
        raise UserError(f"{path} does not exist{advice}")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {_reason(exc)}") from None
    except ValueError:  # not JSON, or not UTF-8
        raise UserError(f"{path} is damaged: not valid JSON{advice}") from None
    if expect is not None and not isinstance(value, expect):
        raise UserError(f"{path} is damaged: not the JSON adarec writes{advice}")
    return value
