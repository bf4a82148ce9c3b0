"""Top-k over the catalogue from a final hidden state: exact matmul or a faiss index.

The model scores item i as ``w_i . h + b_i`` (its output layer), which is the inner
product of ``[w_i, b_i]`` and ``[h, 1]``: a maximum-inner-product search. Exact scoring is
one matmul over all items; for millions of items an approximate index answers faster:
HNSW below ``IVF_FROM`` items (best recall per query, slow to build), IVF above it (fast
to build on millions of vectors). Padding (id 0) is never returned.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from torch import nn

from adarec.errors import UserError

INDEXES = ("auto", "exact", "faiss")
FAISS_FROM = 200_000  # "auto" switches from exact scoring to faiss at this many items
IVF_FROM = 500_000  # faiss: HNSW below this many items, IVF from here on


class Catalogue(Protocol):
    kind: str

    def top_k(self, hidden: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
        """The ``k`` best internal item ids for a final hidden state [H], and their scores."""


class ExactCatalogue:
    """Every item scored by the model's own head (``model.logits``), then top-k."""

    kind = "exact"

    def __init__(self, model: nn.Module):
        self.model = model

    @torch.inference_mode()
    def top_k(self, hidden: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
        scores = self.model.logits(hidden.unsqueeze(0))[0]
        scores[0] = float("-inf")
        values, indices = torch.topk(scores, k)
        return indices.tolist(), values.tolist()


class FaissCatalogue:
    """Approximate maximum inner product over ``[w_i, b_i]`` rows (items 1..N) with faiss."""

    def __init__(
        self,
        weight: np.ndarray,
        bias: np.ndarray,
        kind: str | None = None,
        nprobe: int | None = None,
        ef_search: int = 128,
        seed: int = 0,
    ):
        import faiss

        vectors = np.ascontiguousarray(np.hstack([weight[1:], bias[1:, None]]), dtype=np.float32)
        count, dim = vectors.shape
        self.kind = kind or ("hnsw" if count < IVF_FROM else "ivf")
        if self.kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = 80
            self.index.hnsw.efSearch = ef_search
        elif self.kind == "ivf":
            lists = max(1, int(math.sqrt(count)))
            quantizer = faiss.IndexFlatIP(dim)
            self.index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(seed).permutation(count)[: 64 * lists]
            self.index.train(vectors[sample])
            self.index.nprobe = nprobe or max(16, lists // 16)
        else:
            raise ValueError(f"unknown faiss index kind {kind!r} (hnsw or ivf)")
        self.index.add(vectors)
        self.dim = dim

    @classmethod
    def from_model(cls, model: nn.Module, **options) -> FaissCatalogue:
        layer = model.output_layer
        return cls(
            layer.weight.detach().cpu().numpy(), layer.bias.detach().cpu().numpy(), **options
        )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and internal ids [Q, k] for hidden states [Q, H]."""
        augmented = np.hstack([queries, np.ones((len(queries), 1))]).astype(np.float32)
        scores, rows = self.index.search(augmented, k)
        return scores, rows + 1  # row r holds item r + 1

    def top_k(self, hidden: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
        scores, ids = self.search(hidden.detach().cpu().numpy()[None], k)
        keep = ids[0] > 0  # faiss pads with -1 when it finds fewer than k
        return ids[0][keep].tolist(), scores[0][keep].tolist()


def make_catalogue(model: nn.Module, index: str) -> Catalogue:
    """``exact``, ``faiss`` or ``auto`` (exact below ``FAISS_FROM`` items)."""
    if index not in INDEXES:
        raise UserError(f"--index must be one of {', '.join(INDEXES)}; got {index!r}")
    if index == "exact" or (index == "auto" and model.num_items < FAISS_FROM):
        return ExactCatalogue(model)
    try:
        import faiss  # noqa: F401
    except ImportError:
        raise UserError("--index faiss needs faiss-cpu: pip install 'adarec[index]'") from None
    return FaissCatalogue.from_model(model)
