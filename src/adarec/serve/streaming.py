"""Per-event (streaming) inference: a small state per user, one new position per event.

A sequential recommender is called once per user event. Instead of re-encoding the whole
history each time, a ``Streamer`` keeps what the next position needs and computes only that
position (Fast WaveNet queues for causal convolutions and pools, a key/value cache for
causal attention):

    state = streamer.init_state()
    state, scores = streamer.step(state, item)     # scores [num_items + 1], column 0 padding

After every event the scores equal ``full_sort_predict`` of the same history as the
predictor serves it (its most recent ``max_len`` items, left-padded). Past ``max_len`` the
models differ:

- AdaRec student with absolute positions (``student.positions``): positions are counted
  within the served window, so once the window slides every item's position (and every
  cached state) changes. Past ``max_len`` each event re-encodes the receptive field
  (``min(receptive field, max_len)`` items, the same computation as
  ``full_sort_predict``): still independent of the history's length.
- AdaRec student without positions: like NextItNet below, it streams exactly forever
  when its receptive field fits in ``max_len`` (else it re-encodes the window past it).
- SASRec (and BERT4Rec fine-tuned causally): the same position shift invalidates the
  key/value cache, so past ``max_len`` each event re-encodes the ``max_len`` window.
- NextItNet has no positions: when its receptive field fits in ``max_len`` it streams
  exactly forever; otherwise it re-encodes the window past ``max_len``.

Every re-encode is counted (``Streamer.reencodes``). Bidirectional BERT4Rec (each new item
changes every earlier position) and the paper op set (centred ops read the next position)
cannot stream exactly and are refused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adarec.errors import UserError
from adarec.models.base import SequentialRecommender
from adarec.models.layers import MultiHeadSelfAttention, TransformerBlock
from adarec.models.nextitnet import NextItNet
from adarec.models.transformer import TransformerRecommender
from adarec.nas.operations import left_reach
from adarec.nas.student import Student


@dataclass
class StreamState:
    """One user's streaming state.

    ``events``: known items appended so far. ``recent``: the last items (internal ids) kept
    for re-encoding past the exact range. ``tensors``: the model's queues or key/value
    caches, each [rows, width] (empty when the next event re-encodes anyway). ``output``:
    the last position's final hidden state [width] (None before the first event).
    """

    events: int = 0
    recent: list[int] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)
    output: torch.Tensor | None = None

    def nbytes(self) -> int:
        """Bytes of the tensors, output and kept items (what a store holds)."""
        size = sum(t.numel() * t.element_size() for t in self.tensors)
        if self.output is not None:
            size += self.output.numel() * self.output.element_size()
        return size + 4 * len(self.recent)


class Streamer(ABC):
    """Incremental inference for one model (eval mode, CPU or GPU tensors alike).

    ``exact_events``: how many events the incremental step covers (None: all); past it
    each event re-encodes the last ``keep`` items.
    """

    exact_events: int | None
    keep: int
    layout = "torch"  # how the state's tensors are laid out (part of a stored state's tag)

    def __init__(self, model: SequentialRecommender):
        self.model = model.eval()
        self.reencodes = 0

    def init_state(self) -> StreamState:
        """The state of a user with no event yet."""
        return StreamState(tensors=self._initial_tensors())

    @torch.inference_mode()
    def advance(self, state: StreamState, item: int) -> StreamState:
        """The state after appending internal item id ``item`` (its ``output`` is new)."""
        if not 1 <= item <= self.model.num_items:
            raise ValueError(f"item {item} is not an internal item id (1..{self.model.num_items})")
        events = state.events + 1
        recent = (state.recent + [item])[-self.keep :] if self.keep else []
        if self.exact_events is not None and events > self.exact_events:
            self.reencodes += 1
            return StreamState(events, recent, [], self._reencode(recent))
        tensors, output = self._step(state, item)
        return StreamState(events, recent, tensors, output)

    def step(self, state: StreamState, item: int) -> tuple[StreamState, torch.Tensor]:
        """The state after ``item`` and the scores over [padding] + items: [num_items + 1]."""
        state = self.advance(state, item)
        with torch.inference_mode():
            return state, self.model.logits(state.output.unsqueeze(0))[0]

    def advance_top_k(
        self, state: StreamState, item: int, k: int
    ) -> tuple[StreamState, list[int], list[float]]:
        """The state after ``item`` and the ``k`` best items then (never the padding
        column), with their scores: what ``/events`` answers with an exact top-k."""
        state = self.advance(state, item)
        with torch.inference_mode():
            scores = self.model.logits(state.output.unsqueeze(0))[0]
            scores[0] = float("-inf")
            values, indices = torch.topk(scores, k)
        return state, indices.tolist(), values.tolist()

    def rebuild(self, items: Sequence[int]) -> StreamState:
        """The state after a whole history (internal ids, oldest first), e.g. after a loss.

        Only the last ``max_len`` items are stepped through: the served window is all a
        full recomputation reads.
        """
        items = list(items)
        if self.exact_events is not None and len(items) > self.exact_events:
            recent = items[-self.keep :]
            with torch.inference_mode():
                output = self._reencode(recent)
            return StreamState(len(items), recent, [], output)
        # Here keep is 0 or every item is within max_len: nothing before start to keep.
        start = max(0, len(items) - self.model.max_len)
        state = self.init_state()
        state.events = start
        for item in items[start:]:
            state = self.advance(state, item)
        return state

    def _reencode(self, recent: list[int]) -> torch.Tensor:
        """The last output of the model over ``recent``, served as the window's tail."""
        device = self.model.output_layer.weight.device
        items = torch.tensor([recent], device=device)
        return self._forward_tail(items)[0, -1]

    def _forward_tail(self, items: torch.Tensor) -> torch.Tensor:
        return self.model.forward(items).output

    @abstractmethod
    def _initial_tensors(self) -> list[torch.Tensor]: ...

    @abstractmethod
    def _step(self, state: StreamState, item: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The new tensors and output after ``item`` at position ``state.events``."""


def _op_step(op: nn.Module, inputs: torch.Tensor, reach: int) -> torch.Tensor:
    """A causal op's output at the newest position; ``inputs`` end there."""
    if reach == 0:  # skip: the newest input itself
        return inputs[-1]
    span = reach + 1
    return op.step(inputs if inputs.size(0) == span else inputs[inputs.size(0) - span :])


def _keeps_zero(op: str) -> bool:
    """Whether an op maps all-zero inputs to zero (skip and the pools; not convolutions)."""
    return op == "skip" or op.endswith("pool3")


def _push(history: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(window = history + value, the history one position later)."""
    window = torch.cat([history, value.unsqueeze(0)])
    return window, window[1:]


class StudentStreamer(Streamer):
    """The AdaRec student: per cell, a queue of the last inputs of every edge input.

    Edges reading the same input (the cell input or a node) share one queue, as long as
    the longest reach among them; padding is zeros, as the model holds it.
    """

    def __init__(self, model: Student):
        if model.genotype.op_set != "causal":
            raise UserError(
                f"the student uses the {model.genotype.op_set!r} op set, whose centred ops "
                "read the next position: it cannot be served per event (use /recommend)"
            )
        super().__init__(model)
        if not model.uses_positions and model.window <= model.max_len:
            # Nothing shifts when the served window slides, and the last output reads no
            # item the window cuts off: the queues stay exact for every event.
            self.exact_events, self.keep = None, 0
        else:
            self.exact_events = model.max_len
            self.keep = min(model.window, model.max_len)
        # A node whose edges are all "none" is zero at every position, and so is a pool or
        # skip of it: such edges are left out (a convolution of zeros is kept: its
        # LayerNorm adds a bias), and zero nodes add nothing to the cell's weighted sum.
        zero = [False]  # per edge input; input 0 is the cell input
        self.edges: list[list[tuple[int, str]]] = []
        for node in model.genotype.nodes:
            live = [(i, op) for i, op in node if op != "none" and not (zero[i] and _keeps_zero(op))]
            self.edges.append(live)
            zero.append(not live)
        self.live = [j for j, edges in enumerate(self.edges) if edges]
        # The cells' mixing weights of the live nodes, fixed at inference: computed once.
        self.node_weights = [
            torch.softmax(cell.node_weights.detach(), 0)[self.live] for cell in model.cells
        ]
        # Per edge input: queue length (the longest reach of the ops reading it) and
        # whether any op reads it at all.
        self.queue = [0] * (len(self.edges) + 1)
        self.read = [False] * (len(self.edges) + 1)
        for edges in self.edges:
            for i, op in edges:
                self.queue[i] = max(self.queue[i], left_reach(op))
                self.read[i] = True

    def _initial_tensors(self) -> list[torch.Tensor]:
        weight = self.model.item_embedding.weight
        return [
            weight.new_zeros(length, self.model.width)
            for _ in self.model.cells
            for length in self.queue
            if length
        ]

    def _step(self, state: StreamState, item: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        model = self.model
        x = model.item_embedding.weight[item]
        if model.uses_positions:  # here state.events < max_len (exact_events)
            x = x + model.position_embedding.embedding.weight[state.events]
        queues, new_queues = iter(state.tensors), []

        def window(index: int, value: torch.Tensor) -> torch.Tensor:
            """Edge input ``index`` at the last positions up to the newest: [queue + 1, C]."""
            if not self.queue[index]:
                return value.unsqueeze(0)
            window, later = _push(next(queues), value)
            new_queues.append(later)
            return window

        for cell, weights in zip(model.cells, self.node_weights, strict=True):
            inputs = [window(0, F.relu(x))]
            nodes = []
            for j, (edges, modules) in enumerate(zip(self.edges, cell.nodes, strict=True)):
                node = None
                for i, op in edges:
                    out = _op_step(modules[str(i)][op], inputs[i], left_reach(op))
                    node = out if node is None else node + out
                if node is not None:
                    nodes.append(node)
                if self.read[j + 1]:
                    inputs.append(
                        window(j + 1, torch.zeros_like(x) if node is None else F.relu(node))
                    )
                else:
                    inputs.append(None)
            # Cell.combine for one position: ReLU(LayerNorm(softmax(w) . nodes)) + input.
            mixed = weights @ torch.stack(nodes) if nodes else torch.zeros_like(x)
            x = F.relu(cell.norm(mixed)) + x
        return new_queues, x

    def _forward_tail(self, items: torch.Tensor) -> torch.Tensor:
        """``model.forward`` over a window's tail (positions max_len - len .. max_len - 1,
        no padding), without the edges that only see zeros: past max_len every event
        pays for this pass, so it is worth the ~1/3 of operators they would cost."""
        model = self.model
        length = items.size(1)
        first = model.max_len - length
        x = model.item_embedding.weight[items[0]]  # [length, C]
        if model.uses_positions:
            x = x + model.position_embedding.embedding.weight[first : first + length]
        for cell, weights in zip(model.cells, self.node_weights, strict=True):
            inputs = [F.relu(x).unsqueeze(0)]  # each [1, length, C], as the ops expect
            nodes = []
            for j, (edges, modules) in enumerate(zip(self.edges, cell.nodes, strict=True)):
                node = None
                for i, op in edges:
                    out = modules[str(i)][op](inputs[i])
                    node = out if node is None else node + out
                if node is not None:
                    nodes.append(node[0])
                if not self.read[j + 1]:
                    inputs.append(None)
                else:
                    inputs.append(torch.zeros_like(inputs[0]) if node is None else F.relu(node))
            mixed = (
                torch.tensordot(weights, torch.stack(nodes), 1) if nodes else torch.zeros_like(x)
            )
            x = F.relu(cell.norm(mixed)) + x
        return x.unsqueeze(0)


class NextItNetStreamer(Streamer):
    """NextItNet: per block, queues of the block input and of the first conv's output."""

    def __init__(self, model: NextItNet):
        super().__init__(model)
        self.receptive_field = 1 + sum(
            block.conv1.left_pad + block.conv2.left_pad for block in model.blocks
        )
        fits = self.receptive_field <= model.max_len
        self.exact_events = None if fits else model.max_len
        self.keep = 0 if fits else model.max_len

    def _initial_tensors(self) -> list[torch.Tensor]:
        weight = self.model.item_embedding.weight
        return [
            weight.new_zeros(conv.left_pad, self.model.hidden_size)
            for block in self.model.blocks
            for conv in (block.conv1, block.conv2)
        ]

    def _step(self, state: StreamState, item: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.model.item_embedding.weight[item]
        queues, new_queues = iter(state.tensors), []
        for block in self.model.blocks:
            window, later = _push(next(queues), x)
            new_queues.append(later)
            branch = torch.relu(block.norm1(block.conv1.step(window)))
            window, later = _push(next(queues), branch)
            new_queues.append(later)
            branch = torch.relu(block.norm2(block.conv2.step(window)))
            if block.scale is not None:
                branch = branch * block.scale
            x = x + branch
        return new_queues, x


class CausalAttentionStreamer(Streamer):
    """SASRec (or BERT4Rec fine-tuned causally): a key/value cache per block, [events, H]."""

    def __init__(self, model: TransformerRecommender):
        if not model.attends_causally():
            raise UserError(
                f"{type(model).__name__} attends bidirectionally: every new item changes the "
                "states of all earlier positions, so it cannot be served per event exactly "
                "(use /recommend, which re-encodes the history)"
            )
        super().__init__(model)
        self.exact_events = model.max_len
        self.keep = model.max_len

    def _initial_tensors(self) -> list[torch.Tensor]:
        weight = self.model.item_embedding.weight
        return [
            weight.new_zeros(0, self.model.hidden_size) for _ in range(2 * len(self.model.blocks))
        ]

    def _step(self, state: StreamState, item: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        model = self.model
        x = (
            model.item_embedding.weight[item]
            + model.position_embedding.embedding.weight[state.events]
        )
        x = model.embedding_norm(x)
        caches, new_caches = iter(state.tensors), []
        for block in model.blocks:
            keys, values = next(caches), next(caches)
            attended, keys, values = _attend(block.attention, x, keys, values)
            new_caches += [keys, values]
            x = _finish_block(block, x, attended)
        return new_caches, x


def _attend(
    attention: MultiHeadSelfAttention, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention of the newest position over itself and the cached ones; grown caches."""
    heads, size = attention.num_heads, attention.head_size
    q, k, v = attention.qkv(x).unflatten(0, (3, -1)).unbind(0)
    keys = torch.cat([keys, k.unsqueeze(0)])
    values = torch.cat([values, v.unsqueeze(0)])
    q = q.view(heads, 1, size)
    scores = q @ keys.view(-1, heads, size).permute(1, 2, 0) * size**-0.5  # [heads, 1, n]
    weights = torch.softmax(scores, dim=-1)
    mixed = (weights @ values.view(-1, heads, size).transpose(0, 1)).flatten()
    return attention.out(mixed), keys, values


def _finish_block(block: TransformerBlock, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    x = block.attention_norm(x + attended)
    return block.feed_forward_norm(x + block.feed_forward(x))


class CompiledStudentStreamer(Streamer):
    """The AdaRec student's step as ONE compiled call per event (``CompiledStep``): the
    queues, every op, the norms, the head and the top-k in machine code.

    Same events, re-encodes and answers as ``StudentStreamer`` (the PyTorch reference,
    exact against ``full_sort_predict``); its state is one array [rows, C] of queues (see
    ``adarec.serve.compiled_step``), so the two runtimes' stored states differ in layout
    (``layout`` goes into the state store's tag).
    """

    layout = "compiled"

    def __init__(self, model: Student, step: Any = None):
        from adarec.serve.compiled_step import CompiledStep

        super().__init__(model)
        self.compiled = step if step is not None else CompiledStep(model)
        # The same bounds as StudentStreamer: exact forever only when nothing shifts.
        if not model.uses_positions and model.window <= model.max_len:
            self.exact_events, self.keep = None, 0
        else:
            self.exact_events = model.max_len
            self.keep = min(model.window, model.max_len)

    def _initial_tensors(self) -> list[torch.Tensor]:
        return [torch.from_numpy(self.compiled.initial_state())]

    def _run(
        self, queues: np.ndarray, items: Sequence[int], first_position: int, k: int
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[int], list[float]]:
        state, hidden, ids, scores = self.compiled.run(
            queues, np.asarray(items, dtype=np.int64), first_position, k
        )
        return [torch.from_numpy(state)], torch.from_numpy(hidden), ids, scores

    def _step(self, state: StreamState, item: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        tensors, output, _, _ = self._run(state.tensors[0].numpy(), [item], state.events, 0)
        return tensors, output

    def _reencode(self, recent: list[int]) -> torch.Tensor:
        first = self.model.max_len - len(recent)  # the window's tail, as served
        _, output, _, _ = self._run(self.compiled.initial_state(), recent, first, 0)
        return output

    def advance_top_k(
        self, state: StreamState, item: int, k: int
    ) -> tuple[StreamState, list[int], list[float]]:
        if not 1 <= item <= self.model.num_items:
            raise ValueError(f"item {item} is not an internal item id (1..{self.model.num_items})")
        events = state.events + 1
        recent = (state.recent + [item])[-self.keep :] if self.keep else []
        if self.exact_events is not None and events > self.exact_events:
            self.reencodes += 1
            first = self.model.max_len - len(recent)
            _, output, ids, scores = self._run(self.compiled.initial_state(), recent, first, k)
            return StreamState(events, recent, [], output), ids, scores
        tensors, output, ids, scores = self._run(state.tensors[0].numpy(), [item], state.events, k)
        return StreamState(events, recent, tensors, output), ids, scores

    def rebuild(self, items: Sequence[int]) -> StreamState:
        """The state after a whole history in one compiled call over its last
        ``window + reach`` items: the queues hold inputs up to ``reach`` back, whose own
        values read at most ``window - 1`` further, so older items change nothing."""
        items = list(items)
        if self.exact_events is not None and len(items) > self.exact_events:
            recent = items[-self.keep :]
            return StreamState(len(items), recent, [], self._reencode(recent))
        start = max(0, len(items) - (self.model.window + self.model.reach))
        recent = items[-self.keep :] if self.keep else []
        if start == len(items):
            return StreamState(len(items), recent, self._initial_tensors())
        tensors, output, _, _ = self._run(self.compiled.initial_state(), items[start:], start, 0)
        return StreamState(len(items), recent, tensors, output)


RUNTIMES = ("compiled", "torch")


def streamer_for(model: nn.Module, runtime: str = "torch") -> Streamer:
    """The streamer of a trained model; UserError for a model that cannot stream exactly.

    ``runtime`` "compiled": a student's one-call compiled step (other models have none and
    stream with PyTorch); "torch": the PyTorch step, the reference.
    """
    if runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if isinstance(model, Student):
        if runtime == "compiled":
            return CompiledStudentStreamer(model)
        return StudentStreamer(model)
    if isinstance(model, NextItNet):
        return NextItNetStreamer(model)
    if isinstance(model, TransformerRecommender):
        return CausalAttentionStreamer(model)
    raise UserError(
        f"{type(model).__name__} has no per-event inference (it does not depend on the "
        "order of the history); use /recommend"
    )
