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

Each model owns its per-position step next to its forward (``Student.step``,
``NextItNet.step``, ``TransformerRecommender.step``, built from its cells', blocks' and
ops' own ``step``); a streamer only keeps the state (queues, caches, the kept items, the
history's digest) and decides when to step and when to re-encode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from adarec.errors import UserError
from adarec.models.base import SequentialRecommender
from adarec.models.nextitnet import NextItNet
from adarec.models.transformer import TransformerRecommender
from adarec.nas.student import Student


class ForeignState(ValueError):
    """A stored state that this model must not use (other model, other format, corrupt,
    or shapes that do not fit this model's streamer)."""


# The history digest: the sum (mod 2^64) over the items of splitmix64(item ^ position x
# golden ratio). A sum, so that a whole history is digested in a few vectorised numpy ops
# (a client's history of 10,000 items in ~0.1 ms) while an event adds one term (~0.3 us);
# the position in each term makes it order-sensitive. splitmix64 is a bijection of its
# input, so two histories of the same length that differ in one item always differ;
# otherwise a collision has the odds of two random 64-bit numbers.
_MASK = (1 << 64) - 1
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def extend_digest(digest: int, item: int, position: int) -> int:
    """The digest of a history after appending internal id ``item`` at ``position`` (the
    count of items before it)."""
    z = (item ^ (position * _GOLDEN)) & _MASK
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return (digest + (z ^ (z >> 31))) & _MASK


def history_digest(items: Sequence[int]) -> int:
    """The digest of a whole history (internal ids, oldest first): the same value as
    ``extend_digest`` item by item from 0 (the empty history)."""
    if not len(items):
        return 0
    # uint64 arrays wrap on overflow, as the masks above do.
    z = np.asarray(items, dtype=np.uint64) ^ (
        np.arange(len(items), dtype=np.uint64) * np.uint64(_GOLDEN)
    )
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    z ^= z >> np.uint64(31)
    return int(z.sum(dtype=np.uint64))


@dataclass
class StreamState:
    """One user's streaming state.

    ``events``: known items appended so far. ``recent``: the last items (internal ids) kept
    for re-encoding past the exact range. ``tensors``: the model's queues or key/value
    caches, each [rows, width] (empty when the next event re-encodes anyway). ``output``:
    the last position's final hidden state [width] (None before the first event).
    ``digest``: ``history_digest`` of all ``events`` items, so that a client's history can
    be compared with the state in full, whatever the model keeps of it.
    """

    events: int = 0
    recent: list[int] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)
    output: torch.Tensor | None = None
    digest: int = 0

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
        self._tensor_shapes: list[tuple[int, ...]] | None = None  # see ``_shapes``

    def init_state(self) -> StreamState:
        """The state of a user with no event yet."""
        return StreamState(tensors=self._initial_tensors())

    @torch.inference_mode()
    def advance(self, state: StreamState, item: int) -> StreamState:
        """The state after appending internal item id ``item`` (its ``output`` is new)."""
        if not 1 <= item <= self.model.num_items:
            raise ValueError(f"item {item} is not an internal item id (1..{self.model.num_items})")
        events = state.events + 1
        digest = extend_digest(state.digest, item, state.events)
        recent = (state.recent + [item])[-self.keep :] if self.keep else []
        if self.exact_events is not None and events > self.exact_events:
            self.reencodes += 1
            return StreamState(events, recent, [], self._reencode(recent), digest)
        tensors, output = self._step(state, item)
        return StreamState(events, recent, tensors, output, digest)

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
        new, ids, scores = self._advance_top_k(state, item, k)
        # Here, not in each runtime's own step: one digest for every runtime.
        new.digest = extend_digest(state.digest, item, state.events)
        return new, ids, scores

    def _advance_top_k(
        self, state: StreamState, item: int, k: int
    ) -> tuple[StreamState, list[int], list[float]]:
        state = self.advance(state, item)
        with torch.inference_mode():
            scores = self.model.logits(state.output.unsqueeze(0))[0]
            scores[0] = float("-inf")
            values, indices = torch.topk(scores, k)
        return state, indices.tolist(), values.tolist()

    def rebuild(self, items: Sequence[int]) -> StreamState:
        """The state after a whole history (internal ids, oldest first), e.g. after a loss."""
        items = list(items)
        state = self._rebuild(items)
        # The digest of the whole history, whatever part of it the runtime stepped through.
        state.digest = history_digest(items)
        return state

    def _rebuild(self, items: list[int]) -> StreamState:
        """``rebuild`` without the digest. Only the last ``max_len`` items are stepped
        through: the served window is all a full recomputation reads."""
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
        """The last output of the model over ``recent``, served as the window's tail: the
        model's own forward."""
        device = self.model.output_layer.weight.device
        items = torch.tensor([recent], device=device)
        return self.model.forward(items).output[0, -1]

    def check_state(self, state: StreamState) -> None:
        """ForeignState unless ``state`` has the form this streamer writes: counts, kept
        items and tensor shapes (a stored state of this model's tag can still be damaged
        or written by a buggy process; stepping from it would fail or read out of bounds).
        """
        events, width = state.events, self.model.hidden_size
        kept = min(self.keep, events)
        if events < 0 or len(state.recent) != kept:
            raise ForeignState(f"it holds {len(state.recent)} items for {events} events")
        if kept and not all(1 <= item <= self.model.num_items for item in state.recent):
            raise ForeignState("it holds items that are not this model's")
        if (state.output is None) != (events == 0) or (
            state.output is not None and tuple(state.output.shape) != (width,)
        ):
            raise ForeignState("its output does not fit the model")
        reencodes = self.exact_events is not None and events > self.exact_events
        expected = [] if reencodes else self._shapes(events)
        shapes = [tuple(tensor.shape) for tensor in state.tensors]
        if shapes != expected:
            raise ForeignState(
                f"its tensors {shapes} do not fit the model's after {events} events {expected}"
            )

    def _shapes(self, events: int) -> list[tuple[int, ...]]:
        """The shapes of a state's tensors after ``events`` events within the exact range:
        those of the initial state (fixed-size queues) unless a streamer says otherwise."""
        if self._tensor_shapes is None:
            self._tensor_shapes = [tuple(tensor.shape) for tensor in self._initial_tensors()]
        return self._tensor_shapes

    @abstractmethod
    def _initial_tensors(self) -> list[torch.Tensor]: ...

    @abstractmethod
    def _step(self, state: StreamState, item: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The new tensors and output after ``item`` at position ``state.events``."""


class StudentStreamer(Streamer):
    """The AdaRec student: ``Student.step`` from per-cell queues of the edge inputs.

    Edges reading the same input (the cell input or a node) share one queue, as long as
    the longest reach among them (``StudentCell.queue_lengths``); padding is zeros, as the
    model holds it.
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
        # The cells' mixing weights, fixed at inference: computed once.
        self.weights = model.step_weights()

    def _initial_tensors(self) -> list[torch.Tensor]:
        return self.model.step_state()

    def _step(self, state: StreamState, item: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        # Within the exact range: state.events < max_len is the new item's position.
        output, queues = self.model.step(item, state.events, state.tensors, self.weights)
        return queues, output

    def _reencode(self, recent: list[int]) -> torch.Tensor:
        """The student's forward over the window's tail (``Student.last_output``): the
        served window's last ``len(recent)`` items, at positions max_len - len .. max_len - 1
        (past max_len the window is full), nothing before them within the receptive field."""
        model = self.model
        device = model.output_layer.weight.device
        items = torch.tensor([recent], device=device)
        positions = None
        if model.uses_positions:
            positions = torch.arange(model.max_len - len(recent), model.max_len, device=device)
            positions = positions.unsqueeze(0)
        return model.last_output(items, positions)[0]


class NextItNetStreamer(Streamer):
    """NextItNet: ``NextItNet.step`` from per-block queues of the block input and of the
    first conv's output."""

    def __init__(self, model: NextItNet):
        super().__init__(model)
        self.receptive_field = 1 + sum(
            block.conv1.left_pad + block.conv2.left_pad for block in model.blocks
        )
        fits = self.receptive_field <= model.max_len
        self.exact_events = None if fits else model.max_len
        self.keep = 0 if fits else model.max_len

    def _initial_tensors(self) -> list[torch.Tensor]:
        return self.model.step_state()

    def _step(self, state: StreamState, item: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        output, queues = self.model.step(item, state.events, state.tensors)
        return queues, output


class CausalAttentionStreamer(Streamer):
    """SASRec (or BERT4Rec fine-tuned causally): ``TransformerRecommender.step`` from a
    key/value cache per block, [events, H]."""

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
        return self.model.step_state()

    def _step(self, state: StreamState, item: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        output, caches = self.model.step(item, state.events, state.tensors)
        return caches, output

    def _shapes(self, events: int) -> list[tuple[int, ...]]:
        # The caches grow by one row per event.
        return [(events, self.model.hidden_size)] * (2 * len(self.model.blocks))


class CompiledStudentStreamer(Streamer):
    """The AdaRec student's step as ONE compiled call per event (``CompiledStep``): the
    queues, every op, the norms, the head and the top-k in machine code.

    Same events, re-encodes and answers as ``StudentStreamer`` (the PyTorch reference,
    exact against ``full_sort_predict``); its state is one array [rows, C] of queues (see
    ``adarec.nas.compiled_step``), so the two runtimes' stored states differ in layout
    (``layout`` goes into the state store's tag).
    """

    layout = "compiled"

    def __init__(self, model: Student, step: Any = None):
        from adarec.nas.compiled_step import CompiledStep

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
        """Several items (a rebuild or a re-encode) from ``queues`` in one compiled call."""
        items = np.asarray(items, dtype=np.int64)
        state, hidden, ids, scores = self.compiled.run(queues, items, first_position, k)
        return [torch.from_numpy(state)], torch.from_numpy(hidden), ids, scores

    def _step(self, state: StreamState, item: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        queues, hidden, _, _ = self.compiled.step(state.tensors[0].numpy(), item, state.events, 0)
        return [torch.from_numpy(queues)], torch.from_numpy(hidden)

    def _reencode(self, recent: list[int]) -> torch.Tensor:
        first = self.model.max_len - len(recent)  # the window's tail, as served
        _, output, _, _ = self._run(self.compiled.initial_state(), recent, first, 0)
        return output

    def _advance_top_k(
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
        # The common case called straight (each Python call costs ~0.1-0.3 us of a ~35 us
        # event).
        queues, hidden, ids, scores = self.compiled.step(
            state.tensors[0].numpy(), item, state.events, k
        )
        return (
            StreamState(events, recent, [torch.from_numpy(queues)], torch.from_numpy(hidden)),
            ids,
            scores,
        )

    def _rebuild(self, items: Sequence[int]) -> StreamState:
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
