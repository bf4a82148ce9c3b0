"""Predictor: id mapping, padding, truncation, fallback, exclusion and every bad input."""

import shutil

import pytest
import torch

from adarec.data.preprocess import prepare
from adarec.data.splits import item_counts
from adarec.errors import UserError
from adarec.io import read_json
from adarec.runs import load_run_config as run_config
from adarec.runs import load_run_model
from adarec.serve.export import export_run
from adarec.serve.predictor import Predictor
from tests.serve.conftest import damaged_copy

ITEMS = ["<pad>", "10", "20", "30", "40", "50"]
POPULARITY = [0, 5, 9, 1, 7, 3]  # most popular: 20, 40, 10, 50, 30
MAX_LEN = 3


class RecordingScorer:
    """Scores item i as i (higher ids rank first) and records every input batch."""

    def __init__(self):
        self.inputs: list[torch.Tensor] = []

    def __call__(self, items: torch.Tensor) -> torch.Tensor:
        self.inputs.append(items.clone())
        return torch.arange(len(ITEMS), dtype=torch.float32).repeat(len(items), 1)


@pytest.fixture
def scorer():
    return RecordingScorer()


@pytest.fixture
def predictor(scorer):
    return Predictor(scorer, ITEMS, POPULARITY, MAX_LEN)


def test_maps_raw_ids_and_left_pads(predictor, scorer):
    response = predictor.recommend(["20", 40], k=2)
    assert scorer.inputs[0].tolist() == [[0, 2, 4]]  # integers are accepted as raw ids
    assert response == {
        "items": ["50", "40"],
        "scores": [5.0, 4.0],
        "unknown_items": [],
        "fallback": None,
        "truncated": False,
    }


def test_unknown_items_are_ignored_and_listed_once(predictor, scorer):
    response = predictor.recommend(["nope", "10", "nope", 99], k=1)
    assert scorer.inputs[0].tolist() == [[0, 0, 1]]
    assert response["unknown_items"] == ["nope", 99]
    assert response["fallback"] is None


@pytest.mark.parametrize("history", [[], ["unknown", "also-unknown"]])
def test_no_known_item_falls_back_to_popularity(predictor, scorer, history):
    response = predictor.recommend(history, k=3)
    assert scorer.inputs == []  # the model is not called
    assert response["items"] == ["20", "40", "10"]
    assert response["scores"] == [9.0, 7.0, 5.0]
    assert response["fallback"] == "popularity"
    assert response["unknown_items"] == history


def test_long_history_keeps_the_most_recent_items(predictor, scorer):
    response = predictor.recommend(["10", "20", "30", "40", "50"], k=1)
    assert scorer.inputs[0].tolist() == [[3, 4, 5]]
    assert response["truncated"] is True
    assert predictor.recommend(["10", "20", "30"], k=1)["truncated"] is False


def test_padding_is_never_recommended(predictor):
    response = predictor.recommend(["10"], k=len(ITEMS) - 1)
    assert sorted(response["items"]) == sorted(ITEMS[1:])


def test_exclude_seen_drops_history_items(predictor):
    response = predictor.recommend(["50", "30", "10", "20"], k=3, exclude_seen=True)
    assert response["items"] == ["40"]  # only one unseen item is left; fewer than k come back
    assert predictor.recommend(["50"], k=2, exclude_seen=True)["items"] == ["40", "30"]
    assert predictor.recommend(["50"], k=2)["items"] == ["50", "40"]


def test_batch_scores_known_histories_in_one_call(predictor, scorer):
    results = predictor.recommend_batch([["10"], [], ["x", "30", "40"]], k=2, exclude_seen=True)
    assert len(scorer.inputs) == 1
    assert scorer.inputs[0].tolist() == [[0, 0, 1], [0, 3, 4]]
    assert [r["items"] for r in results] == [["50", "40"], ["20", "40"], ["50", "20"]]
    assert [r["fallback"] for r in results] == [None, "popularity", None]
    assert results[2]["unknown_items"] == ["x"]


@pytest.mark.parametrize("k", [0, -1, len(ITEMS), True, "3", 2.0])
def test_k_out_of_range_is_a_user_error(predictor, k):
    with pytest.raises(UserError, match="k must be an integer between 1 and 5"):
        predictor.recommend(["10"], k=k)


@pytest.mark.parametrize(
    "history, message",
    [
        ("10,20", "must be a list"),
        (None, "must be a list"),
        (["10", 2.5], "strings or integers"),
        (["10", None], "strings or integers"),
        ([True], "strings or integers"),
    ],
)
def test_malformed_history_is_a_user_error(predictor, history, message):
    with pytest.raises(UserError, match=message):
        predictor.recommend(history, k=1)


def test_run_predictor_matches_the_model(runs):
    """On a trained run: same top-k as the model itself, and real training popularity."""
    run = runs["sasrec"]
    predictor = Predictor.from_run(run)
    model, spec = load_run_model(run)
    history = predictor.item_ids[1:6]
    response = predictor.recommend(history, k=5)
    items = torch.zeros(1, spec["max_len"], dtype=torch.long)
    items[0, -5:] = torch.arange(1, 6)
    with torch.no_grad():
        expected = model.full_sort_predict(items)[0, 1:].topk(5).indices + 1
    assert response["items"] == [predictor.item_ids[i] for i in expected.tolist()]
    cfg = run_config(run)
    counts = item_counts(prepare(cfg.data, cfg.seed))
    fallback = predictor.recommend([], k=3)
    assert fallback["scores"] == sorted(counts.tolist(), reverse=True)[:3]


def test_run_is_served_and_exported_without_preparing_data(runs, tmp_path, no_data_preparation):
    """Popularity and ids come from the files the stage wrote, not from the dataset."""
    run = tmp_path / "run"
    shutil.copytree(runs["nextitnet"], run)
    counts = read_json(run / "popularity.json")
    for backend in ("eager", "onnx"):
        fallback = Predictor.from_run(run, backend).recommend([], k=3)
        assert fallback["scores"] == sorted(counts, reverse=True)[:3]
    artefact = export_run(run, "torchscript", tmp_path / "artefact")
    assert read_json(artefact / "popularity.json") == counts


@pytest.mark.parametrize("content", [None, b"", b"{", b"[1, 2]", b'["a"]'])
def test_missing_or_damaged_run_popularity_names_the_file(runs, tmp_path, content):
    run = damaged_copy(runs["sasrec"], tmp_path / "run", "popularity.json", content)
    message = r"popularity[.]json is (missing|damaged).*adarec evaluate RUN"
    with pytest.raises(UserError, match=message):
        Predictor.from_run(run)
    with pytest.raises(UserError, match=message):
        export_run(run, "onnx", tmp_path / "artefact")


def test_evaluate_completes_a_run_from_before_the_serving_files(runs, tmp_path):
    """An older run (no popularity.json, no test_histories.json) is served again after
    ``adarec evaluate RUN``, which writes them from its own, checked data."""
    from adarec.pipeline.evaluate import evaluate_run
    from adarec.serve.measure import run_histories

    run = damaged_copy(runs["sasrec"], tmp_path / "run", "popularity.json", None)
    (run / "test_histories.json").unlink()
    with pytest.raises(UserError, match="adarec evaluate RUN"):
        Predictor.from_run(run)
    evaluate_run(run)
    assert read_json(run / "popularity.json") == read_json(runs["sasrec"] / "popularity.json")
    assert read_json(run / "test_histories.json") == read_json(
        runs["sasrec"] / "test_histories.json"
    )
    assert Predictor.from_run(run).recommend([], k=3)["items"]
    assert run_histories(run, 8, len(read_json(run / "items.json")) - 1).shape[1] == 8


def test_from_run_rejects_bad_paths_and_backends(runs, tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        Predictor.from_run(tmp_path / "missing")
    with pytest.raises(UserError, match="unknown backend"):
        Predictor.from_run(runs["sasrec"], backend="tensorrt")
    with pytest.raises(UserError, match="no trained model"):
        Predictor.from_run(tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["eager", "torchscript", "onnx"])
def test_cuda_serving_matches_cpu(runs, backend):
    history = Predictor.from_run(runs["sasrec"]).item_ids[1:8]
    on_cpu = Predictor.from_run(runs["sasrec"], backend).recommend(history, k=5)
    on_gpu = Predictor.from_run(runs["sasrec"], backend, device="cuda").recommend(history, k=5)
    assert on_gpu["items"] == on_cpu["items"]
    assert on_gpu["scores"] == pytest.approx(on_cpu["scores"], abs=1e-4)
