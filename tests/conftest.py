"""Shared fixtures: tiny synthetic configurations and an isolated data cache."""

from __future__ import annotations

import sys

import pytest

from adarec.config import Config, load_config

TINY = [
    "data.dataset=synthetic",
    "data.synthetic_users=60",
    "data.synthetic_items=30",
    "data.synthetic_length=16",
    "data.max_len=10",
    "model.hidden_size=16",
    "model.num_blocks=2",
    "model.num_heads=2",
    "model.inner_size=32",
    "model.pretrain_epochs=1",
    "train.epochs=2",
    "train.batch_size=32",
    "search.epochs=2",
    "search.batch_size=32",
    "search.width=8",
    "search.cells=2",
    "search.nodes=2",
    "student.epochs=2",
    "student.batch_size=32",
    "eval.batch_size=64",
    "bench.repeats=2",
    "bench.warmup=1",
    "bench.batch_sizes=[1,4]",
    # One student at the search's budget: the front (the default) is tested on its own.
    "run.front=false",
]


def tiny_config(*overrides: str) -> Config:
    """A configuration that trains in about a second on synthetic data."""
    return load_config(None, TINY + list(overrides))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Prepared data is cached; keep the tests' cache out of the user's home directory.
    monkeypatch.setenv("ADAREC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def forbid_data_preparation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any preparation of a dataset fail the test (what serving must never need)."""
    from adarec.data import preprocess

    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was prepared")

    original = preprocess.prepare
    # Modules that imported ``prepare`` by name hold their own reference: replace it there too.
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "adarec" and vars(module).get("prepare") is original:
            monkeypatch.setattr(module, "prepare", refuse)


@pytest.fixture
def no_data_preparation(monkeypatch):
    forbid_data_preparation(monkeypatch)
