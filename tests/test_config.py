import logging
import math
from pathlib import Path

import pytest
import yaml

from adarec.config import (
    RANGES,
    Budget,
    Range,
    all_keys,
    load_config,
    numeric_keys,
    parse_budget,
    save_config,
    to_dict,
)
from adarec.errors import UserError


def test_defaults_then_file_then_set(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 3\nmodel:\n  name: nextitnet\n")
    cfg = load_config(path, ["train.epochs=7", "model.dilations=[1,2,4]", "eval.exclude_seen=true"])
    assert cfg.train.lr == 0.01  # from the file
    assert cfg.train.epochs == 7  # --set wins over the file
    assert cfg.model.name == "nextitnet"
    assert cfg.model.dilations == [1, 2, 4]
    assert cfg.eval.exclude_seen is True
    assert cfg.search.cells == 4  # untouched default


def test_unknown_key_names_the_closest_valid_key(tmp_path: Path):
    with pytest.raises(UserError, match="did you mean 'train.lr'"):
        load_config(None, ["train.lrr=0.1"])
    path = tmp_path / "c.yaml"
    path.write_text("serch:\n  cells: 2\n")
    with pytest.raises(UserError, match="did you mean 'search'"):
        load_config(path)


@pytest.mark.parametrize(
    "item, message",
    [
        ("train.epochs=abc", "expected int"),
        ("model.name=gru", "must be one of"),
        ("distill.gamma=1.5", "distill.gamma"),
        ("search.gamma=1.5", "'distill.gamma' must satisfy"),  # the old name, read as the new
        ("model.num_heads=3", "divisible"),
        ("trainlr", "key=value"),
        ("model.dropout=5", "model.dropout"),
        ("data.num_negatives=-1", "data.num_negatives"),
        ("data.num_negatives=0", "data.num_negatives"),
        ("seed=-1", "'seed'"),
        ("device=tpu", "'device'"),
        ("model.kernel_size=0", "model.kernel_size"),
        ("model.inner_size=0", "model.inner_size"),
        ("train.lr=nan", "train.lr"),
        ("train.epochs=.inf", "expected int"),
        ("seed=" + "9" * 400, "'seed'"),
        ("eval.ks=[]", "eval.ks"),
        ("data.sep=ab", "data.sep"),
        ("model.dilations=[1,", "cannot read"),
        ("bench.backends=[torchscript]", "bench.backends"),
        ("bench.backends=[eager,tflite]", "bench.backends"),
        ("student.budget=fast", "student.budget.*not understood"),
        ("student.budget=2.5M", "student.budget.*speed-up"),
        ("student.budget=0.5x", "student.budget.*exceed 1x"),
        ("student.positions=relative", "'student.positions' must be one of absolute, none"),
    ],
)
def test_bad_values_are_user_errors(item: str, message: str):
    with pytest.raises(UserError, match=message):
        load_config(None, [item])


def test_missing_and_malformed_files(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_saved_config_reloads_identically(tmp_path: Path):
    cfg = load_config(None, ["seed=7", "search.ops=paper", "data.rating_threshold=3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert "distill.layer_mapping" in all_keys()


def test_presets_load():
    for preset in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        load_config(preset)


def test_paper_preset_keeps_its_distillation_setting():
    paper = load_config(Path(__file__).parents[1] / "configs" / "paper.yaml")
    assert paper.distill.gamma == 0.5 and paper.search.cost_form == "paper"


# A search section as adarec wrote it before the distill section: the objective's keys in it.
OLD_SEARCH = {
    "gamma": 0.3,
    "gamma_decay": 0.9,
    "use_ce": True,
    "use_emb": False,
    "use_hid": True,
    "use_logit": True,
    "use_cost": False,
    "hid_distance": "mse",
    "layer_mapping": "skip",
    "kd_temperature": 2.0,
    "cells": 2,
}


def _expect_moved(cfg) -> None:
    d = cfg.distill
    assert (d.gamma, d.gamma_decay, d.use_emb, d.hid_distance) == (0.3, 0.9, False, "mse")
    assert (d.layer_mapping, d.kd_temperature) == ("skip", 2.0)
    # The cost term stays with the search.
    assert cfg.search.use_cost is False and cfg.search.cells == 2


@pytest.fixture
def adarec_log(caplog, monkeypatch):
    """caplog for the adarec logger, also after a command has turned its propagation off."""
    monkeypatch.setattr(logging.getLogger("adarec"), "propagate", True)
    caplog.set_level(logging.INFO, logger="adarec")
    return caplog


def test_a_file_with_the_old_search_keys_loads_them_into_distill(tmp_path: Path, adarec_log):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"search": OLD_SEARCH}))
    cfg = load_config(path)
    _expect_moved(cfg)
    assert "search.gamma -> distill.gamma" in adarec_log.text
    assert [r.levelno for r in adarec_log.records] == [logging.WARNING]


def test_a_saved_config_from_before_the_move_loads_as_it_meant(tmp_path: Path):
    old = to_dict(load_config())
    del old["distill"]
    old["search"].update(OLD_SEARCH)
    cfg = load_config(base=old)
    _expect_moved(cfg)
    assert old["search"]["gamma"] == 0.3  # the caller's mapping is left as it was
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_set_with_an_old_key_sets_the_new_one(adarec_log):
    cfg = load_config(None, ["search.use_hid=false", "search.kd_temperature=3"])
    assert cfg.distill.use_hid is False and cfg.distill.kd_temperature == 3.0
    assert "--set search.use_hid: the key is now distill.use_hid" in adarec_log.text


def test_an_old_and_a_new_name_that_disagree_are_refused(tmp_path: Path):
    path = tmp_path / "both.yaml"
    path.write_text("search:\n  gamma: 0.3\ndistill:\n  gamma: 0.7\n")
    with pytest.raises(UserError, match="'search.gamma'.*old name of 'distill.gamma'"):
        load_config(path)
    path.write_text("search:\n  gamma: 0.7\ndistill:\n  gamma: 0.7\n")
    assert load_config(path).distill.gamma == 0.7


def test_every_numeric_key_has_a_declared_range():
    assert sorted(numeric_keys()) == sorted(RANGES)
    assert "data.num_negatives" in RANGES and "model.dilations" in RANGES


def _outside(valid: Range) -> float:
    """A value just outside ``valid`` (below it where it has a lower bound)."""
    if valid.low != -math.inf:
        return valid.low if valid.low_open else valid.low - 1
    if valid.high != math.inf:
        return valid.high if valid.high_open else valid.high + 1
    return math.inf


@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_range_is_enforced(key: str):
    value = _outside(RANGES[key])
    text = (
        f"[{value:g}]"
        if key in ("model.dilations", "eval.ks", "bench.batch_sizes")
        else f"{value!r}"
    )
    text = {"inf": ".inf"}.get(text, text)
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={text}"])


def test_config_file_that_is_a_folder_or_not_text(tmp_path: Path, monkeypatch):
    with pytest.raises(UserError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"train:\n  lr: \xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8"):
        load_config(binary)
    binary.write_text("train:\n  lr: 0.1\n")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)  # root reads every file: simulate a refusal
    with pytest.raises(UserError, match="cannot read config file .*Permission denied"):
        load_config(binary)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("5x", "speedup", 5.0),
        ("12.5X", "speedup", 12.5),
        ("2.5M", "macs", 2.5e6),
        ("2500000macs", "macs", 2.5e6),
        ("3.1 MMACs", "macs", 3.1e6),
        ("800k", "macs", 8e5),
        ("1.5ms", "ms", 1.5),
        ("1e6", "macs", 1e6),
    ],
)
def test_parse_budget(text, kind, value):
    assert parse_budget(text) == Budget(kind, pytest.approx(value))


@pytest.mark.parametrize("text", ["", "fast", "5 times", "-3x", "0ms", "1x", "0.5x", "5xx"])
def test_bad_budgets_are_user_errors(text):
    with pytest.raises(UserError, match="budget"):
        parse_budget(text)


def test_student_positions_default_to_none_and_accept_absolute():
    assert load_config(None, []).student.positions == "none"
    assert load_config(None, ["student.positions=absolute"]).student.positions == "absolute"


def test_eval_ks_must_include_the_selection_cutoff():
    """Issue 29 (6): without 10 in eval.ks, training crashed after its first epoch
    (KeyError 'NDCG@10'); the configuration is refused on load instead."""
    with pytest.raises(UserError, match=r"'eval.ks' must include 10.*\[5, 10, 20\]"):
        load_config(None, ["eval.ks=[5,20]"])
    assert load_config(None, ["eval.ks=[10,50]"]).eval.ks == [10, 50]
