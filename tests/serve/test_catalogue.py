"""Catalogue top-k: exact scoring and the approximate faiss indexes against it."""

import numpy as np
import pytest
import torch

from adarec.errors import UserError
from adarec.serve.catalogue import ExactCatalogue, FaissCatalogue, make_catalogue
from tests.models.helpers import tiny_model


def clustered(count: int, dim: int, seed: int) -> np.ndarray:
    """Vectors around 50 centres, as trained embeddings are (uniform noise has no structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    return (centres[rng.integers(0, 50, count)] + 0.5 * rng.normal(size=(count, dim))).astype(
        np.float32
    )


def test_exact_top_k_is_the_models_own_ranking_without_padding():
    model = tiny_model("sasrec")
    hidden = torch.randn(16)
    with torch.no_grad():
        model.output_layer.bias[0] = 1e6  # padding would win if it were not excluded
        scores = model.logits(hidden.unsqueeze(0))[0]
    ids, values = ExactCatalogue(model).top_k(hidden, 5)
    expected = torch.topk(scores[1:], 5)
    assert ids == (expected.indices + 1).tolist()
    assert values == pytest.approx(expected.values.tolist())


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_faiss_recall_against_exact(kind):
    weight = np.vstack([np.zeros((1, 16)), clustered(5000, 16, 0)]).astype(np.float32)
    bias = np.random.default_rng(1).normal(scale=0.1, size=5001).astype(np.float32)
    queries = clustered(50, 16, 2)
    index = FaissCatalogue(weight, bias, kind=kind)
    assert index.kind == kind
    _, found = index.search(queries, 10)
    exact = np.argsort(-(queries @ weight[1:].T + bias[1:]), axis=1)[:, :10] + 1
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.9
    ids, scores = index.top_k(torch.from_numpy(queries[0]), 10)
    assert 0 not in ids and len(ids) == 10 and scores == sorted(scores, reverse=True)


def test_make_catalogue_chooses_by_option_and_size():
    model = tiny_model("sasrec")
    assert make_catalogue(model, "exact").kind == "exact"
    assert make_catalogue(model, "auto").kind == "exact"  # 30 items: exact
    assert make_catalogue(model, "faiss").kind == "hnsw"
    with pytest.raises(UserError, match="--index must be one of auto, exact, faiss"):
        make_catalogue(model, "annoy")
