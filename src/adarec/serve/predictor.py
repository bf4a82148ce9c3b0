"""Top-k next-item recommendations for raw item histories, from a run or an exported artefact.

The same ``Predictor`` answers the CLI (``adarec recommend``) and the HTTP service; only the
scorer differs by backend (eager PyTorch, TorchScript, ONNX Runtime).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adarec.config import SERVING_BACKENDS
from adarec.data.splits import left_pad
from adarec.errors import UserError
from adarec.io import read_json
from adarec.runtime.distributed import resolve_device
from adarec.serve.export import (
    INPUT_NAME,
    ITEMS_FILE,
    MODEL_FILES,
    OUTPUT_NAME,
    POPULARITY_FILE,
    ScorePredict,
    current_export,
    example_histories,
    frozen_torchscript,
    is_artefact,
    model_info,
    read_metadata,
    read_popularity,
    run_items,
    run_popularity,
)

BACKENDS = SERVING_BACKENDS

# LongTensor [B, max_len] (left-padded) -> float scores [B, num_items + 1] on any device.
Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EncodedHistory:
    """A raw history mapped to internal ids."""

    items: list[int]  # internal ids of the known items, oldest first
    unknown: list[Any]  # raw ids not in the catalogue, each once, in order of appearance
    truncated: bool  # more known items than the model's max_len


def _torch_scorer(predict: Scorer, device: torch.device) -> Scorer:
    def score(items: torch.Tensor) -> torch.Tensor:
        return predict(items.to(device))

    return score


def onnx_scorer(path: Path, device: torch.device, threads: int) -> Scorer:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own kinds (InvalidProtobuf, Fail, ...)
        raise damaged_export(path, exc) from None

    def score(items: torch.Tensor) -> torch.Tensor:
        (scores,) = session.run([OUTPUT_NAME], {INPUT_NAME: items.cpu().numpy()})
        return torch.from_numpy(scores)

    return score


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, but still the format that
        # serves without Python model code; the warning would repeat on every load.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.load(str(path), map_location=device)
        except Exception as exc:  # torch raises RuntimeError, ValueError, ... on bad bytes
            raise damaged_export(path, exc) from None


def damaged_export(path: Path, exc: BaseException | None = None) -> UserError:
    reason = f" ({str(exc).splitlines()[0][:200]})" if exc is not None and str(exc) else ""
    return UserError(
        f"{path} is missing or damaged{reason}; export the run again (adarec export RUN_DIR)"
    )


class Predictor:
    """Maps raw item ids to the model's ids, scores the histories and returns top-k raw ids."""

    def __init__(
        self,
        scorer: Scorer,
        item_ids: list[Any],
        popularity: Sequence[float],
        max_len: int,
        info: dict[str, Any] | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        if len(popularity) != len(item_ids):
            raise ValueError("popularity must have one count per item id (index 0: padding)")
        self.scorer = scorer
        self.item_ids = item_ids
        self.max_len = max_len
        self.info = info or {}
        self.model = model  # the eager model (None for exported artefacts): streams events
        # A student's compiled paths (backend "compiled"): its compiled step ranks batch-1
        # requests (when faster) and streams events (None: every request through ``scorer``).
        self.compiled: CompiledPaths | None = None
        self.index = {str(raw): internal for internal, raw in enumerate(item_ids) if internal > 0}
        self.popularity = torch.as_tensor(popularity, dtype=torch.float32)
        self.popularity[0] = float("-inf")

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @classmethod
    def from_run(
        cls, path: Path, backend: str | None = None, device: str = "cpu", threads: int = 0
    ) -> Predictor:
        """A predictor for a run directory or an exported artefact directory.

        ``backend`` None: for a run directory, compiled for a student of the causal op set
        on the CPU (``adarec.nas.compiled_step``) and eager otherwise; for an export, the
        artefact's own format. "eager" stays the PyTorch reference, selected explicitly.
        A run directory served by TorchScript or ONNX uses its artefact in ``export/FORMAT``,
        exported first when it is missing or older than the run's model.
        """
        if backend is not None and backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path} is not a directory (give a run or export directory)")
        torch_device = resolve_device(device)
        if threads > 0:
            torch.set_num_threads(threads)
        if is_artefact(path):
            if backend == "compiled":
                raise UserError(
                    f"{path} is an exported artefact; the compiled backend serves a run "
                    "directory (it reads the student's weights)"
                )
            return cls._from_artefact(path, backend, torch_device, threads)
        if backend not in (None, "eager", "compiled"):
            artefact = current_export(path, backend, torch_device)
            return cls._from_artefact(artefact, backend, torch_device, threads)
        from adarec.runs import load_run_model

        model, spec = load_run_model(path, torch_device)
        if backend is None:
            backend = "compiled" if compiles(model, torch_device) else "eager"
        compiled = None
        if backend == "compiled":
            if not compiles(model, torch_device):
                raise UserError(
                    "the compiled backend serves AdaRec students of the causal op set on the "
                    f"CPU; this is a {spec['kind']} on {torch_device} (use --backend eager "
                    "or torchscript)"
                )
            compiled = CompiledPaths.of(model)
        info = {**model_info(path, model, spec), "backend": backend}
        scorer = _torch_scorer(model.full_sort_predict, torch_device)
        if compiled is not None:
            scorer = compiled.scorer()
            info["batch1_path"] = "compiled step" if compiled.step_for_one else "torchscript"
        items = run_items(path, spec["num_items"])
        popularity = run_popularity(path, spec["num_items"])
        predictor = cls(scorer, items, popularity, spec["max_len"], info, model)
        predictor.compiled = compiled
        return predictor

    @classmethod
    def _from_artefact(
        cls, path: Path, backend: str | None, device: torch.device, threads: int
    ) -> Predictor:
        metadata = read_metadata(path)
        backend = backend or metadata["format"]
        if backend != metadata["format"]:
            raise UserError(
                f"{path} holds the {metadata['format']} export of a run; use backend "
                f"{metadata['format']} (or give the run directory for {backend})"
            )
        model_path = path / MODEL_FILES[backend]
        if not model_path.is_file():
            raise damaged_export(model_path)
        if backend == "onnx":
            scorer = onnx_scorer(model_path, device, threads)
        else:
            traced_on = metadata.get("traced_on", "cpu")
            if traced_on != str(device):
                raise UserError(
                    f"{path} holds TorchScript traced on {traced_on}, which runs there only; "
                    f"export the run with --device {device} to serve it on {device}"
                )
            scorer = _torch_scorer(load_torchscript(model_path, device), device)
        info = {**metadata, "backend": backend}
        hint = "export the run again (adarec export RUN_DIR)"
        items = read_json(path / ITEMS_FILE, list, hint)
        if len(items) != metadata["num_items"] + 1:
            raise UserError(f"{path / ITEMS_FILE} does not match the model's items; {hint}")
        popularity = read_popularity(path / POPULARITY_FILE, metadata["num_items"], hint)
        return cls(scorer, items, popularity, metadata["max_len"], info)

    def check_k(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_items:
            raise UserError(f"k must be an integer between 1 and {self.num_items}; got {k!r}")

    def popular(self, k: int) -> tuple[list[int], list[float]]:
        """The ``k`` most popular training items (internal ids) and their counts."""
        (top,) = _top_k(self.popularity.unsqueeze(0), k)
        return top

    def encode(self, history: Sequence[Any]) -> EncodedHistory:
        """Known items (internal ids) and unknown raw ids of one history."""
        if isinstance(history, str | bytes) or not isinstance(history, Sequence):
            raise UserError(f"a history must be a list of item ids; got {history!r}")
        known, unknown = [], []
        for raw in history:
            if isinstance(raw, bool) or not isinstance(raw, str | int):
                raise UserError(f"item ids must be strings or integers; got {raw!r}")
            internal = self.index.get(str(raw))
            if internal is not None:
                known.append(internal)
            elif raw not in unknown:
                unknown.append(raw)
        return EncodedHistory(known, unknown, len(known) > self.max_len)

    def recommend(
        self, history: Sequence[Any], k: int = 10, exclude_seen: bool = False
    ) -> dict[str, Any]:
        """``{"items", "scores", "unknown_items", "fallback", "truncated"}`` for one history."""
        return self.recommend_batch([history], k, exclude_seen)[0]

    def recommend_batch(
        self, histories: Sequence[Sequence[Any]], k: int = 10, exclude_seen: bool = False
    ) -> list[dict[str, Any]]:
        """One response per history, scored in one model call.

        A history with no known item gets the most popular training items
        (``"fallback": "popularity"``). With ``exclude_seen``, the history's items are never
        recommended, so fewer than ``k`` items come back when too few are left.
        """
        self.check_k(k)
        if isinstance(histories, str | bytes) or not isinstance(histories, Sequence):
            raise UserError("histories must be a list of histories (lists of item ids)")
        encoded = [self.encode(history) for history in histories]
        rows = [row for row, e in enumerate(encoded) if e.items]
        top: dict[int, tuple[list[int], list[float]]] = {}
        fallback: tuple[list[int], list[float]] = ([], [])
        if len(rows) == 1 and self.compiled is not None and self.compiled.step_for_one:
            # A batch-1 request: one compiled call over the history's receptive field.
            (row,) = rows
            history = encoded[row].items
            top[row] = self.compiled.step.rank(history, k, history if exclude_seen else None)
        elif rows:
            inputs = left_pad([np.asarray(encoded[r].items) for r in rows], self.max_len)
            with torch.inference_mode():
                scores = self.scorer(torch.from_numpy(inputs)).float()
                scores[:, 0] = float("-inf")
                if exclude_seen:
                    seen_rows = [i for i, r in enumerate(rows) for _ in encoded[r].items]
                    seen_items = [item for r in rows for item in encoded[r].items]
                    scores[seen_rows, seen_items] = float("-inf")
                ranked = _top_k(scores, k)
            top = dict(zip(rows, ranked, strict=True))
        if len(rows) < len(encoded):
            fallback = self.popular(k)
        results = []
        for row, e in enumerate(encoded):
            items, scores_k = top[row] if e.items else fallback
            results.append(
                {
                    "items": [self.item_ids[i] for i in items],
                    "scores": scores_k,
                    "unknown_items": e.unknown,
                    "fallback": None if e.items else "popularity",
                    "truncated": e.truncated,
                }
            )
        return results


@dataclass
class CompiledPaths:
    """The compiled backend of a student: its compiled step (one machine-code call per
    event, ``adarec.nas.compiled_step``) and its frozen TorchScript graph.

    Events always take the step. A whole history at batch 1 takes whichever of the two
    was faster on full-length histories when the model was loaded: stepping through the
    receptive field costs it once per item (65 us for the 9-item field of the ml-1m 2 x 96
    student, 2.7x faster than its graph), which loses to the graph's batched products for
    a wide field of convolutions (612 vs 486 us for the 41 items of the ml-100k 4 x 64
    conv cell). A batch of histories always takes the graph.
    """

    step: Any
    graph: torch.jit.ScriptModule
    step_for_one: bool
    timings_us: dict[str, float]

    @classmethod
    def of(cls, model: torch.nn.Module, repeats: int = 20) -> CompiledPaths:
        from adarec.nas.compiled_step import CompiledStep

        step = CompiledStep(model)
        graph = frozen_torchscript(
            ScorePredict(model).eval(), example_histories(model.num_items, model.max_len)
        )
        rng = np.random.default_rng(0)
        histories = rng.integers(1, model.num_items + 1, size=(repeats, model.max_len))
        timings = {"compiled step": [], "torchscript": []}
        with torch.inference_mode():
            for history in histories:
                batch = torch.from_numpy(history[None, :])
                for name, call in (
                    ("compiled step", lambda h=history: step.rank(h.tolist(), 10)),
                    ("torchscript", lambda b=batch: torch.topk(graph(b)[0, 1:], 10)),
                ):
                    start = time.perf_counter_ns()
                    call()
                    timings[name].append(time.perf_counter_ns() - start)
        medians = {name: float(np.median(ns[2:])) / 1e3 for name, ns in timings.items()}
        faster = medians["compiled step"] <= medians["torchscript"]
        return cls(step, graph, faster, {k: round(v, 1) for k, v in medians.items()})

    def scorer(self) -> Scorer:
        """``full_sort_predict`` as the backend serves it: one history by the faster path,
        a batch by the graph."""

        def score(items: torch.Tensor) -> torch.Tensor:
            if items.shape[0] == 1 and self.step_for_one:
                return self.step.scores(items)
            return self.graph(items.cpu())

        return score


def compiles(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether the compiled backend can serve ``model``: a causal-op student on the CPU."""
    from adarec.nas.student import Student

    return isinstance(model, Student) and model.genotype.op_set == "causal" and device.type == "cpu"


def _top_k(scores: torch.Tensor, k: int) -> list[tuple[list[int], list[float]]]:
    """Per row: the ``k`` best internal ids and their scores, masked (-inf) items left out."""
    values, indices = torch.topk(scores, k, dim=1)
    values, indices = values.cpu(), indices.cpu()
    out = []
    for row_values, row_indices in zip(values, indices, strict=True):
        keep = torch.isfinite(row_values)
        out.append((row_indices[keep].tolist(), row_values[keep].tolist()))
    return out
