"""Genotypes: derivation, the readable file (round trip and errors), text, drawing, random."""

import json

import pytest
import torch

from adarec.errors import UserError
from adarec.io import read_json
from adarec.nas.genotype import (
    Genotype,
    derive_genotype,
    draw_genotype,
    genotype_from_dict,
    genotype_to_dict,
    genotype_to_text,
    load_genotype,
    random_genotype,
    save_genotype,
)
from adarec.nas.operations import CAUSAL_OPS, OP_SETS

OPS = list(CAUSAL_OPS)


def _alphas() -> list[torch.Tensor]:
    """Alphas whose argmax is known: node 1's edge from node 0 picks "none"."""
    alphas = [torch.zeros(j + 1, len(OPS)) for j in range(3)]
    picks = [["causal_conv3"], ["skip", "none"], ["causal_avg_pool3", "causal_dil_conv5", "skip"]]
    for alpha, node in zip(alphas, picks, strict=True):
        for i, op in enumerate(node):
            alpha[i, OPS.index(op)] = 1.0
    return alphas


def _genotype() -> Genotype:
    return derive_genotype(_alphas(), OPS, "causal", cells=4, width=16)


def test_derive_takes_the_argmax_of_every_edge_none_included():
    genotype = _genotype()
    assert genotype.nodes == (
        ((0, "causal_conv3"),),
        ((0, "skip"), (1, "none")),
        ((0, "causal_avg_pool3"), (1, "causal_dil_conv5"), (2, "skip")),
    )
    assert (genotype.op_set, genotype.cells, genotype.width) == ("causal", 4, 16)


def test_save_and_load_round_trip_with_a_readable_file(tmp_path):
    genotype = _genotype()
    path = tmp_path / "genotype.json"
    save_genotype(genotype, path)
    assert load_genotype(path) == genotype
    data = read_json(path)
    assert data["nodes"][1] == [
        {"input": "cell_input", "op": "skip"},
        {"input": "node_0", "op": "none"},
    ]
    assert {k: data[k] for k in ("op_set", "cells", "width")} == {
        "op_set": "causal",
        "cells": 4,
        "width": 16,
    }
    assert genotype_from_dict(genotype_to_dict(genotype)) == genotype


def test_text_lists_every_node():
    text = genotype_to_text(_genotype())
    assert "node_0 = causal_conv3(cell_input)" in text
    assert "node_2 = causal_avg_pool3(cell_input) + causal_dil_conv5(node_0) + skip(node_1)" in text
    assert "output" in text.splitlines()[-1]


def test_draw_writes_a_png(tmp_path):
    path = tmp_path / "cell.png"
    draw_genotype(_genotype(), path)
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _valid() -> dict:
    return genotype_to_dict(_genotype())


def _broken(change) -> dict:
    data = _valid()
    change(data)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_broken(lambda d: d["nodes"][0][0].update(op="conv7")), "unknown op 'conv7'"),
        (_broken(lambda d: d["nodes"][0][0].update(op="conv3")), "unknown op 'conv3'"),
        (_broken(lambda d: d["nodes"][0][0].update(input="node_0")), "input 'node_0'"),
        (_broken(lambda d: d["nodes"][1].append({"input": "node_0", "op": "skip"})), "same input"),
        (_broken(lambda d: d.pop("width")), "lacks width"),
        (_broken(lambda d: d.update(cells=0)), "cells"),
        (_broken(lambda d: d.update(op_set="mine")), "op set"),
        (_broken(lambda d: d.update(nodes=[])), "non-empty"),
        (_broken(lambda d: d["nodes"][0].append(["cell_input", "skip"])), "'input' and 'op'"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_genotype_file_is_a_user_error(tmp_path, data, message):
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message) as error:
        load_genotype(path)
    assert str(path) in str(error.value)


def test_unreadable_genotype_files_are_user_errors(tmp_path):
    path = tmp_path / "genotype.json"
    with pytest.raises(UserError, match="does not exist"):
        load_genotype(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_genotype(path)


@pytest.mark.parametrize("op_set", list(OP_SETS))
def test_random_genotype_is_seeded_and_valid(op_set):
    genotype = random_genotype(op_set, nodes=3, cells=2, width=8, seed=3)
    assert genotype == random_genotype(op_set, nodes=3, cells=2, width=8, seed=3)
    assert [len(node) for node in genotype.nodes] == [1, 2, 3]
    assert [i for node in genotype.nodes for i, _ in node] == [0, 0, 1, 0, 1, 2]
    assert all(op in OP_SETS[op_set] and op != "none" for node in genotype.nodes for _, op in node)
    seeds = {random_genotype(op_set, 3, 2, 8, seed=s).nodes for s in range(10)}
    assert len(seeds) > 1
    assert genotype_from_dict(genotype_to_dict(genotype)) == genotype
