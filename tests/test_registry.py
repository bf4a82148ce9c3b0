"""The name-to-class table: build_model turns a ModelConfig into the right, correctly sized
model, and every model's spec rebuilds it (in the format model files have always held)."""

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from adarec.config import ModelConfig, load_config
from adarec.errors import UserError
from adarec.models.bert4rec import BERT4Rec
from adarec.models.nextitnet import NextItNet
from adarec.models.pop import Popularity
from adarec.models.sasrec import SASRec
from adarec.nas.genotype import genotype_to_dict, random_genotype
from adarec.nas.student import Student
from adarec.nas.supernet import Supernet
from adarec.registry import MODELS, TEACHERS, build_model, model_from_spec
from adarec.runs import load_run_model, save_model


def test_builds_each_model_from_its_fields():
    nextitnet = build_model(
        ModelConfig(
            name="nextitnet",
            hidden_size=12,
            num_blocks=6,
            dilations=[1, 2, 4],
            kernel_size=2,
            residual_scale=False,
            distill_every=3,
        ),
        num_items=40,
        max_len=9,
    )
    assert isinstance(nextitnet, NextItNet)
    assert (nextitnet.num_items, nextitnet.max_len, nextitnet.hidden_size) == (40, 9, 12)
    assert len(nextitnet.blocks) == 6 and nextitnet.distill_every == 3
    assert [b.conv1.conv.dilation[0] for b in nextitnet.blocks] == [1, 2, 4, 1, 2, 4]
    assert nextitnet.blocks[0].conv1.conv.kernel_size == (2,)
    assert nextitnet.blocks[0].scale is None

    sasrec = build_model(
        ModelConfig(name="sasrec", hidden_size=8, num_blocks=3, num_heads=4, inner_size=20), 40, 9
    )
    assert isinstance(sasrec, SASRec) and len(sasrec.blocks) == 3
    assert sasrec.blocks[0].attention.num_heads == 4
    assert sasrec.blocks[0].feed_forward[0].out_features == 20
    assert sasrec.position_embedding.embedding.num_embeddings == 9

    bert = build_model(
        ModelConfig(name="bert4rec", hidden_size=8, num_heads=2, mask_prob=0.3), 40, 9
    )
    assert isinstance(bert, BERT4Rec) and bert.mask_prob == 0.3 and not bert.causal

    assert isinstance(build_model(ModelConfig(name="pop"), 40, 9), Popularity)


def test_rejects_bad_settings():
    with pytest.raises(UserError, match="unknown model"):
        build_model(ModelConfig(name="gru4rec"), 10, 5)
    with pytest.raises(UserError, match="distill_every"):
        build_model(ModelConfig(name="sasrec", num_blocks=2, distill_every=3), 10, 5)


def test_the_table_names_every_teacher_the_config_accepts():
    assert TEACHERS == ("nextitnet", "sasrec", "bert4rec", "pop")
    assert set(MODELS) == {*TEACHERS, "supernet", "student"}


def _models() -> dict[str, torch.nn.Module]:
    """One model of every class in the table, with non-default settings."""
    models = {
        name: build_model(
            ModelConfig(name=name, hidden_size=8, num_blocks=2, num_heads=2, dropout=0.3), 40, 9
        )
        for name in TEACHERS
    }
    models["bert4rec"].causal = True  # as fine-tuned, distilled and saved
    models["supernet"] = Supernet(40, 9, 8, 3, 2, op_set="paper", dropout=0.2, mode="full")
    genotype = random_genotype("causal", nodes=2, cells=3, width=8, seed=1)
    models["student"] = Student(40, 9, genotype, dropout=0.25)
    return models


@pytest.mark.parametrize("name", list(MODELS))
def test_a_spec_rebuilds_the_same_architecture(name: str):
    model = _models()[name]
    rebuilt = model_from_spec(model.to_spec())
    assert type(rebuilt) is type(model)
    assert rebuilt.to_spec() == model.to_spec()
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    assert {key: value.shape for key, value in rebuilt.state_dict().items()} == shapes


def test_specs_keep_the_format_of_earlier_model_files():
    """Run directories written before the models owned their specs load unchanged."""
    models = _models()
    teacher = ModelConfig(name="sasrec", hidden_size=8, num_blocks=2, num_heads=2, dropout=0.3)
    assert models["sasrec"].to_spec() == {
        "kind": "teacher",
        "model": asdict(teacher),
        "num_items": 40,
        "max_len": 9,
    }
    assert models["bert4rec"].to_spec()["causal"] is True
    assert models["supernet"].to_spec() == {
        "kind": "supernet",
        "num_items": 40,
        "max_len": 9,
        "width": 8,
        "cells": 3,
        "nodes": 2,
        "op_set": "paper",
        "dropout": 0.2,
        "mode": "full",
    }
    assert models["student"].to_spec() == {
        "kind": "student",
        "genotype": genotype_to_dict(models["student"].genotype),
        "num_items": 40,
        "max_len": 9,
        "dropout": 0.25,
        "positions": "absolute",  # absent from earlier files: they load as absolute
    }


def test_a_saved_model_loads_with_its_weights(tmp_path: Path):
    model = _models()["student"]
    save_model(tmp_path, model)
    loaded, spec = load_run_model(tmp_path)
    assert spec == model.to_spec()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("name", ["sasrec", "nextitnet", "bert4rec"])
def test_an_absurd_model_size_is_refused_before_allocating(name):
    cfg = load_config(None, [f"model.name={name}", "model.hidden_size=1000000000"])
    with pytest.raises(UserError, match="too large to exist; choose a smaller model"):
        build_model(cfg.model, 60, 10)


def test_a_model_that_cannot_train_in_memory_is_refused(monkeypatch):
    from adarec import registry

    cfg = load_config(None, ["model.name=sasrec", "model.hidden_size=16", "model.num_heads=1"])
    build_model(cfg.model, 60, 10)
    # As if the machine had a millionth of its memory (the weights are ~10 KB here).
    monkeypatch.setattr(registry, "TRAINING_COPIES", 4 * 10**6)
    with pytest.raises(UserError, match="GiB of memory; choose a smaller model"):
        build_model(cfg.model, 60, 10)
