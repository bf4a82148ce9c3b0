"""Measuring runs (bench and report): the histories each run kept, MACs and latency."""

import json
import shutil

import numpy as np
import pytest
import torch

from adarec.data.preprocess import prepare
from adarec.data.splits import eval_split
from adarec.errors import UserError
from adarec.nas.profile import count_macs
from adarec.runs import load_run_config, load_run_model
from adarec.serve.measure import measure_runs, run_histories
from tests.serve.conftest import damaged_copy

BACKENDS = ("eager", "torchscript", "onnx")


def test_kept_histories_are_the_real_test_inputs(runs):
    run = runs["sasrec"]
    _, spec = load_run_model(run)
    cfg = load_run_config(run)
    expected = eval_split(prepare(cfg.data, cfg.seed), "test", spec["max_len"]).inputs
    kept = run_histories(run, spec["max_len"], spec["num_items"])
    np.testing.assert_array_equal(kept, expected[: len(kept)])


@pytest.mark.parametrize("content", [None, b"[]", b"[[1, 2], 3]", b"[[0]]", b"[[100000]]", b"{"])
def test_missing_or_damaged_histories_name_the_file(runs, tmp_path, content):
    run = damaged_copy(runs["sasrec"], tmp_path / "run", "test_histories.json", content)
    with pytest.raises(UserError, match=r"test_histories[.]json is (missing|damaged)"):
        measure_runs({"t": run}, [1], repeats=1, warmup=0)


def test_measure_runs_counts_and_times_without_preparing_data(runs, no_data_preparation):
    dirs = {"teacher": runs["sasrec"], "student": runs["student-causal"]}
    measured = measure_runs(dirs, [1, 3], repeats=2, warmup=1, threads=1, backends=BACKENDS)
    assert set(measured.macs) == set(measured.latency) == set(measured.models) == set(dirs)
    for label, run in dirs.items():
        model, spec = load_run_model(run)
        one = run_histories(run, spec["max_len"], spec["num_items"])[:1]
        assert measured.macs[label] == count_macs(model.full_sort_predict, torch.as_tensor(one)) > 0
        assert set(measured.latency[label]) == set(BACKENDS)
        for per_batch in measured.latency[label].values():
            assert set(per_batch) == {"1", "3"}
            assert all(0 < s["median_ms"] <= s["p95_ms"] for s in per_batch.values())
    medians = measured.medians()
    assert set(medians) == set(dirs)
    for label, per_backend in measured.latency.items():
        assert set(medians[label]) == set(BACKENDS)
        for backend, per_batch in per_backend.items():
            assert medians[label][backend] == {b: s["median_ms"] for b, s in per_batch.items()}


def test_runs_of_other_data_are_refused(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs["pop"], other)
    items = json.loads((other / "items.json").read_text())
    (other / "items.json").write_text(json.dumps(items[:1] + list(reversed(items[1:]))))
    with pytest.raises(UserError, match="trained on other data"):
        measure_runs({"a": runs["pop"], "b": other}, [1], repeats=1, warmup=0)
