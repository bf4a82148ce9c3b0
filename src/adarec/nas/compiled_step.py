"""One compiled call per event: a student's streaming step, head and top-k in machine code.

At batch 1 a student's arithmetic is small (the ml-1m student: ~440k multiply-adds per
event, three quarters of them the output head), and running it op by op through PyTorch
costs ~10x that arithmetic in per-op dispatch (~80 ATen ops per event at a few us each).
Here the whole event (embedding, every cell's ops from their queues, norms, the head's
matvec and the top-k) is one call of a numba-compiled function, so the event costs about
what its arithmetic costs.

The network is handed to the compiled code as data, not code: ``StepProgram`` lays out
the student's weights in one float32 array and its structure (cells, nodes, edges, each
op's kind and where its weights are) in one int64 array. Each op says what it computes
(``adarec.nas.operations.step_spec``), so the one kernel below serves every genotype,
compiles once per machine and is cached on disk (numba ``cache=True``): loading a model
never compiles, and ``CompiledStudentStreamer`` runs one warm-up event at construction so
that no user request pays for loading the cache either.

State of a user: one float32 array [rows, C] holding, per cell and per edge input that a
causal op reads, the last ``reach`` values of that input (oldest first; zeros before the
first event, which is how the model holds left padding). An event writes a new array; the
old one is never modified.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numba
import numpy as np
import torch

from adarec.errors import UserError
from adarec.nas.operations import step_spec
from adarec.nas.student import Student

# Opcodes of the kernel; one per ``StepSpec.kind``.
OPCODES = {"skip": 0, "max_pool": 1, "avg_pool": 2, "conv": 3}
_SKIP, _MAX_POOL, _AVG_POOL, _CONV = 0, 1, 2, 3

# Header of the int64 program; a cell's record follows at ``_HEADER`` + its offset.
_CELLS, _WIDTH, _ROWS, _EMB, _POS, _POS_ROWS, _HEAD_W, _HEAD_B, _INPUTS, _STATE_ROWS = range(10)
_HEADER = 10
# Per cell: norm weight, norm bias, eps, node weights (offsets into the weights), then per
# input (queue length, first state row), per node its edge count, then the edges.
_CELL_FIXED = 4
# Per edge: input, opcode, kernel, dilation, weight, norm weight, norm bias, eps offsets.
_EDGE = 8

# Reassociation lets LLVM vectorise the dot products (sums in another order: differences
# of ~1e-7 against PyTorch, whose kernels reorder sums too). No 'nnan'/'ninf': top-k
# compares against -inf.
_FASTMATH = {"reassoc", "contract", "nsz"}


@numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _layer_norm(y, weight, bias, eps, out, accumulate):  # pragma: no cover - compiled
    """out (+)= LayerNorm(y) * weight + bias, over the last axis of a vector."""
    width = y.shape[0]
    mean = np.float32(0.0)
    for c in range(width):
        mean += y[c]
    mean /= width
    var = np.float32(0.0)
    for c in range(width):
        d = y[c] - mean
        var += d * d
    var /= width
    inv = np.float32(1.0) / np.sqrt(var + eps)
    for c in range(width):
        value = (y[c] - mean) * inv * weight[c] + bias[c]
        if accumulate:
            out[c] += value
        else:
            out[c] = value


@numba.njit(cache=True, nogil=True)
def _matrix(w, offset, rows, cols):  # pragma: no cover - compiled
    """The [rows, cols] view of the weights at ``offset`` (contiguous: BLAS takes it)."""
    return w[offset : offset + rows * cols].reshape((rows, cols))


@numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
def _matvec(weight, x, out):  # pragma: no cover - compiled
    """out = weight @ x for the small matrices of the cells. A loop LLVM vectorises: BLAS
    sgemv's call overhead is most of the time at these sizes (a [96, 288] product)."""
    for o in range(weight.shape[0]):
        row = weight[o]
        acc = np.float32(0.0)
        for c in range(x.shape[0]):
            acc += row[c] * x[c]
        out[o] = acc


@numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
def head_scores(weight_t, bias, x, out):  # pragma: no cover - compiled
    """out = weight_t.T @ x + bias: the head over the catalogue, its weight transposed
    [C, rows]. Eight columns per pass over ``out``, each pass a vectorised multiply-add
    streaming eight rows of the weight: 17-19 us for the ml-1m head [96, 3,417] on this
    machine's core against 21-25 us for BLAS sgemv on [3,417, 96] (which may also spread
    so small a product over threads), and no BLAS in the serving path."""
    width, rows = weight_t.shape
    out[:] = bias
    c = 0
    while c + 8 <= width:
        x0, x1, x2, x3 = x[c], x[c + 1], x[c + 2], x[c + 3]
        x4, x5, x6, x7 = x[c + 4], x[c + 5], x[c + 6], x[c + 7]
        r0, r1, r2, r3 = weight_t[c], weight_t[c + 1], weight_t[c + 2], weight_t[c + 3]
        r4, r5, r6, r7 = weight_t[c + 4], weight_t[c + 5], weight_t[c + 6], weight_t[c + 7]
        for n in range(rows):
            out[n] += (r0[n] * x0 + r1[n] * x1 + r2[n] * x2 + r3[n] * x3) + (
                r4[n] * x4 + r5[n] * x5 + r6[n] * x6 + r7[n] * x7
            )
        c += 8
    while c < width:
        row, xc = weight_t[c], x[c]
        for n in range(rows):
            out[n] += row[n] * xc
        c += 1


@numba.njit(cache=True, fastmath=_FASTMATH, nogil=True)
def run_events(
    prog, w, state, items, first_position, k, exclude, out_ids, out_scores, scores, hidden
):  # pragma: no cover - compiled
    """Step the student over ``items`` (internal ids), updating ``state`` in place.

    ``first_position``: the position index of ``items[0]`` (-1: the student has no
    position embedding). Writes the final hidden state to ``hidden``; then, when
    ``scores`` has a row per head output, the head's scores into it (the padding column
    and the ids in ``exclude`` at -inf) and, when ``k`` > 0, the top-k items into
    ``out_ids`` / ``out_scores``, best first, ties to the lower id. Returns how many were
    found (fewer than k when too few items are left).

    Indices go through 2-D views, never ``offset + c``: numba must check a computed
    index for wrap-around, which keeps LLVM from vectorising the loop.
    """
    cells, width, rows = prog[_CELLS], prog[_WIDTH], prog[_ROWS]
    inputs = prog[_INPUTS]
    nodes_count = inputs - 1
    embedding = _matrix(w, prog[_EMB], rows, width)
    x = np.empty(width, np.float32)
    y = np.empty(width, np.float32)
    mixed = np.empty(width, np.float32)
    cur = np.empty((inputs, width), np.float32)
    nodes = np.empty((nodes_count, width), np.float32)
    taps = np.empty(5 * width, np.float32)  # the longest kernel is 5
    for t in range(items.shape[0]):
        x[:] = embedding[items[t]]
        if first_position >= 0:
            x += _matrix(w, prog[_POS], prog[_POS_ROWS], width)[first_position + t]
        cell = _HEADER
        for _ in range(cells):
            queues = cell + _CELL_FIXED
            counts = queues + 2 * inputs
            edge = counts + nodes_count
            for c in range(width):
                cur[0, c] = max(x[c], np.float32(0.0))
            nodes[:, :] = 0.0
            for j in range(nodes_count):
                node = nodes[j]
                for _ in range(prog[counts + j]):
                    i, code = prog[edge], prog[edge + 1]
                    qlen, row = prog[queues + 2 * i], prog[queues + 2 * i + 1]
                    now = cur[i]
                    if code == _SKIP:
                        node += now
                    elif code == _MAX_POOL:
                        prev, prev2 = state[row + qlen - 1], state[row + qlen - 2]
                        for c in range(width):
                            node[c] += max(now[c], prev[c], prev2[c])
                    elif code == _AVG_POOL:
                        prev, prev2 = state[row + qlen - 1], state[row + qlen - 2]
                        for c in range(width):
                            node[c] += (prev2[c] + prev[c] + now[c]) / np.float32(3.0)
                    else:  # _CONV: one matvec over the stacked taps, then LayerNorm
                        kernel, dilation = prog[edge + 2], prog[edge + 3]
                        for tap in range(kernel):
                            lag = (kernel - 1 - tap) * dilation
                            src = now if lag == 0 else state[row + qlen - lag]
                            taps[tap * width : (tap + 1) * width] = src
                        weight = _matrix(w, prog[edge + 4], width, kernel * width)
                        _matvec(weight, taps[: kernel * width], y)
                        norm_w = w[prog[edge + 5] : prog[edge + 5] + width]
                        norm_b = w[prog[edge + 6] : prog[edge + 6] + width]
                        _layer_norm(y, norm_w, norm_b, w[prog[edge + 7]], node, True)
                    edge += _EDGE
                for c in range(width):
                    cur[j + 1, c] = max(node[c], np.float32(0.0))
            # The cell's output: ReLU(LayerNorm(softmax(node weights) . nodes)) + input.
            node_weights = w[prog[cell + 3] : prog[cell + 3] + nodes_count]
            mixed[:] = 0.0
            for j in range(nodes_count):
                mixed += node_weights[j] * nodes[j]
            norm_w = w[prog[cell] : prog[cell] + width]
            norm_b = w[prog[cell + 1] : prog[cell + 1] + width]
            _layer_norm(mixed, norm_w, norm_b, w[prog[cell + 2]], y, False)
            # Each queue moves one position on: drop its oldest row, append this input.
            for i in range(inputs):
                qlen, row = prog[queues + 2 * i], prog[queues + 2 * i + 1]
                for r in range(qlen - 1):
                    state[row + r] = state[row + r + 1]
                if qlen:
                    state[row + qlen - 1] = cur[i]
            for c in range(width):
                x[c] = max(y[c], np.float32(0.0)) + x[c]
            cell = edge
    hidden[:] = x
    if k <= 0 and scores.shape[0] != rows:
        return 0
    if scores.shape[0] != rows:  # top-k alone: the scores are scratch
        scores = np.empty(rows, np.float32)
    bias = w[prog[_HEAD_B] : prog[_HEAD_B] + rows]
    head_scores(_matrix(w, prog[_HEAD_W], width, rows), bias, x, scores)
    scores[0] = -np.inf  # the padding column
    for e in range(exclude.shape[0]):
        if 0 <= exclude[e] < rows:
            scores[exclude[e]] = -np.inf
    if k <= 0:
        return 0
    return top_k(scores, k, out_ids, out_scores)


@numba.njit(cache=True, nogil=True)
def top_k(scores, k, out_ids, out_scores):  # pragma: no cover - compiled
    """The k best of ``scores`` past column 0 into ``out_ids`` / ``out_scores``, best first,
    ties to the lower id; how many were found (-inf never enters)."""
    for r in range(k):
        out_scores[r] = -np.inf
        out_ids[r] = -1
    # One pass, the k best kept sorted: an item enters only when it beats the k-th best
    # (rare after the first items), faster than any blocked or vectorised variant tried.
    for n in range(1, scores.shape[0]):
        score = scores[n]
        if score > out_scores[k - 1]:
            r = k - 1
            while r > 0 and out_scores[r - 1] < score:
                out_scores[r] = out_scores[r - 1]
                out_ids[r] = out_ids[r - 1]
                r -= 1
            out_scores[r] = score
            out_ids[r] = n
    found = 0
    for r in range(k):
        if out_ids[r] >= 0:
            found += 1
    return found


@numba.njit(cache=True, nogil=True)
def step_event(prog, w, state, item, position, k, out_ids, out_scores):  # pragma: no cover
    """One event from ``state`` (left as it is): (new state, final hidden, top-k found).

    The per-event entry point: what ``run`` would allocate and copy in Python is done here,
    in one call of fewer arguments (the dispatcher's cost grows with their number)."""
    new_state = state.copy()
    hidden = np.empty(prog[_WIDTH], np.float32)
    items = np.empty(1, np.int64)
    items[0] = item
    nothing, no_scores = np.empty(0, np.int64), np.empty(0, np.float32)
    found = run_events(
        prog, w, new_state, items, position, k, nothing, out_ids, out_scores, no_scores, hidden
    )
    return new_state, hidden, found


@dataclass
class StepProgram:
    """A student laid out for ``run_events``: ``prog`` (structure), ``weights`` (float32),
    ``state_rows`` x ``width`` floats of state per user, and whether positions are added."""

    prog: np.ndarray
    weights: np.ndarray
    state_rows: int
    width: int
    num_items: int
    max_len: int
    uses_positions: bool
    macs_per_event: int  # multiply-adds of one event with the head (convolutions + head)
    bytes_per_event: int  # bytes of weights one event reads (every op's, the head, rows)


def build_program(model: Student) -> StepProgram:
    """The program of an eval-mode causal student; UserError for one that cannot stream."""
    genotype = model.genotype
    if genotype.op_set != "causal":
        raise UserError(
            f"the student uses the {genotype.op_set!r} op set, whose centred ops read the next "
            "position: it cannot be served per event (use /recommend)"
        )
    chunks: list[np.ndarray] = []
    size = 0

    def put(array: np.ndarray | torch.Tensor | float) -> int:
        """Append weights; their offset in the float32 array."""
        nonlocal size
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().float().numpy()
        flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
        chunks.append(flat)
        size += flat.size
        return size - flat.size

    width = model.width
    uses_positions = getattr(model, "uses_positions", True)
    head = model.output_layer
    header = [0] * _HEADER
    header[_CELLS] = len(model.cells)
    header[_WIDTH] = width
    header[_ROWS] = head.weight.shape[0]
    header[_EMB] = put(model.item_embedding.weight)
    header[_POS] = put(model.position_embedding.embedding.weight) if uses_positions else -1
    header[_POS_ROWS] = model.max_len
    header[_HEAD_W] = put(head.weight.t())  # [C, rows]: see head_scores
    header[_HEAD_B] = put(head.bias)
    inputs = len(genotype.nodes) + 1
    header[_INPUTS] = inputs
    rows_out = head.weight.shape[0]
    macs = rows_out * width
    # The head and its bias, the item's embedding row and its position row.
    read = rows_out * (width + 1) + width * (2 if uses_positions else 1)
    body: list[int] = []
    rows = 0
    for cell in model.cells:
        # Every edge input's queue holds as many past values as its longest reader reaches.
        specs = [
            [(i, step_spec(cell.nodes[j][str(i)][op])) for i, op in edges]
            for j, edges in enumerate(cell.edges)
        ]
        queue = [0] * inputs
        for edges in specs:
            for i, spec in edges:
                queue[i] = max(queue[i], spec.reach)
        record = [
            put(cell.norm.weight),
            put(cell.norm.bias),
            put(np.float32(cell.norm.eps)),
            put(torch.softmax(cell.node_weights.detach().float(), 0)),
        ]
        read += 2 * width + len(genotype.nodes)
        for length in queue:
            record += [length, rows]
            rows += length
        record += [len(edges) for edges in specs]
        for edges in specs:
            for i, spec in edges:
                conv = spec.kind == "conv"
                if conv:
                    macs += spec.kernel * width * width
                    read += spec.kernel * width * width + 2 * width
                record += [
                    i,
                    OPCODES[spec.kind],
                    spec.kernel,
                    spec.dilation,
                    put(spec.weight) if conv else 0,
                    put(spec.norm_weight) if conv else 0,
                    put(spec.norm_bias) if conv else 0,
                    put(np.float32(spec.eps)) if conv else 0,
                ]
        body += record
    header[_STATE_ROWS] = rows
    return StepProgram(
        prog=np.asarray(header + body, dtype=np.int64),
        weights=np.concatenate(chunks),
        state_rows=rows,
        width=width,
        num_items=model.num_items,
        max_len=model.max_len,
        uses_positions=uses_positions,
        macs_per_event=macs,
        bytes_per_event=4 * read,
    )


class CompiledStep:
    """A student's per-event step as one compiled call (see the module docstring)."""

    def __init__(self, model: Student):
        self.program = build_program(model)
        self.window = model.window
        self.reach = model.reach
        self._nothing = np.zeros(0, dtype=np.int64)
        self._no_scores = np.zeros(0, dtype=np.float32)
        self._scratch = threading.local()
        # Load (or compile, the first time on this machine) the kernel now, not on the
        # first request.
        self.run(self.initial_state(), np.ones(1, dtype=np.int64), 0, 1)
        self.step(self.initial_state(), 1, 0, 1)

    @property
    def uses_positions(self) -> bool:
        return self.program.uses_positions

    def initial_state(self) -> np.ndarray:
        """The state of a user with no event: every queue holds zeros (left padding)."""
        return np.zeros((self.program.state_rows, self.program.width), dtype=np.float32)

    def run(
        self,
        state: np.ndarray,
        items: np.ndarray,
        first_position: int,
        k: int,
        exclude: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
        """(new state, final hidden [C], top-k ids, their scores) after ``items`` (int64;
        one event goes through ``step``).

        ``first_position``: the position index of the first item (ignored without position
        embeddings). ``state`` is not modified. ``k`` 0: no head, no top-k.
        """
        program = self.program
        # Per-thread scratch for what goes back as Python lists (a call costs ~40 us, so
        # each of the microsecond-sized allocations it would make counts).
        scratch = self._scratch
        if getattr(scratch, "k", -1) < k:
            self._grow(k)
        new_state = state.copy()
        hidden = np.empty(program.width, dtype=np.float32)
        found = run_events(
            program.prog,
            program.weights,
            new_state,
            items,
            first_position if program.uses_positions else -1,
            k,
            self._nothing if exclude is None else exclude,
            scratch.ids,
            scratch.top,
            self._no_scores,
            hidden,
        )
        return new_state, hidden, scratch.ids[:found].tolist(), scratch.top[:found].tolist()

    def step(
        self, state: np.ndarray, item: int, position: int, k: int
    ) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
        """``run`` for one event: (new state, final hidden [C], top-k ids, their scores)."""
        scratch = self._scratch
        if getattr(scratch, "k", -1) < k:
            self._grow(k)
        program = self.program
        new_state, hidden, found = step_event(
            program.prog,
            program.weights,
            state,
            item,
            position if program.uses_positions else -1,
            k,
            scratch.ids,
            scratch.top,
        )
        return new_state, hidden, scratch.ids[:found].tolist(), scratch.top[:found].tolist()

    def _grow(self, k: int) -> None:
        """This thread's scratch for the top-k (what goes back as Python lists)."""
        scratch = self._scratch
        scratch.k = max(k, 1)
        scratch.ids = np.empty(scratch.k, dtype=np.int64)
        scratch.top = np.empty(scratch.k, dtype=np.float32)

    def tail(self, history: list[int]) -> tuple[list[int], int]:
        """The items a history's last output depends on and the position of the first.

        The receptive field, positioned as ``full_sort_predict`` serves it: within the
        last ``max_len`` items, counted from the oldest of those.
        """
        served = min(len(history), self.program.max_len)
        tail = history[-min(self.window, served) :]
        return tail, served - len(tail)

    def rank(
        self, history: list[int], k: int, exclude: list[int] | None = None
    ) -> tuple[list[int], list[float]]:
        """The top-k of a whole history (internal ids, oldest first) in one compiled call."""
        tail, first = self.tail(history)
        blocked = None if not exclude else np.asarray(exclude, dtype=np.int64)
        _, _, ids, scores = self.run(self.initial_state(), np.asarray(tail), first, k, blocked)
        return ids, scores

    def scores(self, items: torch.Tensor) -> torch.Tensor:
        """``full_sort_predict`` of left-padded histories [B, L]: scores [B, num_items + 1]
        (the padding column -inf), one compiled call per history."""
        program = self.program
        rows = items.cpu().numpy()
        out = np.empty((rows.shape[0], program.prog[_ROWS]), dtype=np.float32)
        hidden = np.empty(program.width, dtype=np.float32)
        ids, top = np.empty(1, dtype=np.int64), np.empty(1, dtype=np.float32)
        state = self.initial_state()
        for r, row in enumerate(rows):
            tail, first = self.tail(row[row > 0].tolist())
            state[:] = 0.0
            run_events(
                program.prog,
                program.weights,
                state,
                np.asarray(tail, dtype=np.int64),
                first if program.uses_positions else -1,
                0,
                self._nothing,
                ids,
                top,
                out[r],
                hidden,
            )
        return torch.from_numpy(out)
