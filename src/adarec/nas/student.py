"""The discrete student built from a genotype, and weight inheritance from the supernet.

The student has the supernet's embedding, cell output and head, but each edge holds only
its chosen op ("none" edges hold nothing and contribute zeros). Module names mirror the
supernet's (``cells.k.nodes.j.<input>.<op>``), so ``inherit_weights`` copies by name. The
forward has no data-dependent control flow: it traces with ``torch.jit.trace``.
"""

from __future__ import annotations

from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from adarec.errors import UserError
from adarec.models.base import SeqOutput
from adarec.models.layers import item_positions, push_window
from adarec.nas.cells import Cell, CellNetwork
from adarec.nas.genotype import Genotype, genotype_from_dict, genotype_to_dict
from adarec.nas.operations import ConvOp, PoolOp, left_reach, make_op
from adarec.nas.supernet import Supernet


class StudentCell(Cell):
    """One cell of the genotype: ``nodes[j][str(input)][op]`` for every non-none edge.

    Serving (no gradients: evaluation, eager and TorchScript; not ONNX export) computes
    the same in fewer and cheaper ops, which is what counts at batch 1. A state that
    causal convolutions or pools read is padded once and viewed as its windows
    [B, L, C, R + 1] (the state at t - R .. t, R the longest reach among them); each of
    those ops takes its taps from that view: a pool reduces the last 3, a convolution
    multiplies its taps by its weight, already in the [B, L, C] layout its norm reads.
    On the ml-1m 15x student (frozen TorchScript, 2 threads) that is 15% faster at batch 1
    and at batch 256 than each edge's own conv1d (a pad, two transposes and
    ``_slow_conv2d``'s im2col per edge); see benchmarks/serving_paths.py.

    Training keeps one module per edge and their own forward, so the weights, their
    names and their gradients stay the edge's own.
    """

    def __init__(self, genotype: Genotype):
        super().__init__(len(genotype.nodes), genotype.width)
        self.edges = [[(i, op) for i, op in node if op != "none"] for node in genotype.nodes]
        self.nodes = nn.ModuleList(
            nn.ModuleDict(
                {
                    str(i): nn.ModuleDict({op: make_op(op, genotype.width, genotype.op_set)})
                    for i, op in edges
                }
            )
            for edges in self.edges
        )
        # False: serve each edge with its own forward, as training and ONNX export do
        # (benchmarks/serving_paths.py times both).
        self.serve_from_windows = True
        # {state: R}: how far back the causal ops reading a state reach, at most.
        self.window_reach: dict[int, int] = {}
        for j, edges in enumerate(self.edges):
            for i, op in edges:
                module = self.nodes[j][str(i)][op]
                if _reads_windows(module):
                    self.window_reach[i] = max(self.window_reach.get(i, 0), module.reach)
        # The nodes to zero at padding positions: those a later node reads (the network
        # zeroes the cell's output, and the cell's norm is per position, so nothing else
        # sees a node's padding positions) and that can be nonzero there. Histories are
        # left-padded: at a padding position a causal op reads padding alone, which the
        # cell holds at zero, and causal pools and skip keep it zero; a convolution's norm
        # adds its shift, and a centred op reads the next (real) position. Each node not
        # zeroed saves a multiply, with the same outputs.
        read = {i for edges in self.edges for i, _ in edges}
        self.masked_nodes = {
            j
            for j, edges in enumerate(self.edges)
            if j + 1 in read
            and not all(_keeps_padding_zero(self.nodes[j][str(i)][op]) for i, op in edges)
        }
        # The per-event step (``step``). A node whose edges are all "none" is zero at every
        # position, and so is a pool or skip of it: such edges are left out (a convolution
        # of zeros is kept: its LayerNorm adds a bias), and zero nodes add nothing to the
        # cell's weighted sum. ``step_edges[j]``: node j's edges that can be nonzero;
        # ``step_live``: the nodes with any; ``queue_lengths[i]``: how many past values of
        # edge input i (0: the cell input) the step keeps, the longest reach of its readers;
        # ``step_read[i]``: whether any edge reads input i.
        zero = [False]
        self.step_edges: list[list[tuple[int, str]]] = []
        for j, edges in enumerate(self.edges):
            live = [
                (i, op)
                for i, op in edges
                if not (zero[i] and _keeps_padding_zero(self.nodes[j][str(i)][op]))
            ]
            self.step_edges.append(live)
            zero.append(not live)
        self.step_live = [j for j, edges in enumerate(self.step_edges) if edges]
        self.queue_lengths = [0] * (len(self.edges) + 1)
        self.step_read = [False] * (len(self.edges) + 1)
        for edges in self.step_edges:
            for i, op in edges:
                self.queue_lengths[i] = max(self.queue_lengths[i], left_reach(op))
                self.step_read[i] = True
        self.queue_count = sum(1 for length in self.queue_lengths if length)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Not for ONNX export: its exporter has no unfold for a dynamic batch.
        serving = (
            self.serve_from_windows
            and not torch.is_grad_enabled()
            and not torch.onnx.is_in_onnx_export()
        )
        states = [F.relu(x)]
        windows: dict[int, torch.Tensor] = {}
        nodes = []
        for j, (edges, modules) in enumerate(zip(self.edges, self.nodes, strict=True)):
            node = None
            for i, op in edges:
                module = modules[str(i)][op]
                if serving and _reads_windows(module):
                    reach = self.window_reach[i]
                    if i not in windows:
                        padded = F.pad(states[i], (0, 0, reach, 0))
                        windows[i] = padded.unfold(1, reach + 1, 1)
                    out = module.of_windows(windows[i], reach)
                else:
                    out = module(states[i])
                node = out if node is None else node + out
            # A node whose edges are all "none" stays zero.
            if node is None:
                node = torch.zeros_like(x)
            elif j in self.masked_nodes:
                node = node * mask
            nodes.append(node)
            states.append(F.relu(node))
        return self.combine(nodes, x)

    def step_weights(self) -> torch.Tensor:
        """The mixing weights of ``step_live``'s nodes (fixed at inference: compute once)."""
        return torch.softmax(self.node_weights.detach(), 0)[self.step_live]

    def step(
        self, x: torch.Tensor, queues: list[torch.Tensor], weights: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward`` at the newest position only (streaming inference, eval mode, causal
        ops): the cell input there ``x`` [C], the queues of the past edge inputs (one
        [queue_lengths[i], C] per input with a nonzero length, in input order) and
        ``step_weights()``. Returns the cell output [C] and the queues one position later.
        Each op computes its own step from the window of its input (``_op_step``).
        """
        pending = iter(queues)
        later: list[torch.Tensor] = []

        def window(index: int, value: torch.Tensor) -> torch.Tensor:
            """Edge input ``index`` at its last positions up to the newest: [length + 1, C]."""
            if not self.queue_lengths[index]:
                return value.unsqueeze(0)
            values, rest = push_window(next(pending), value)
            later.append(rest)
            return values

        inputs: list[torch.Tensor | None] = [window(0, F.relu(x))]
        nodes = []
        for j, (edges, modules) in enumerate(zip(self.step_edges, self.nodes, strict=True)):
            node = None
            for i, op in edges:
                out = _op_step(modules[str(i)][op], inputs[i], left_reach(op))
                node = out if node is None else node + out
            if node is not None:
                nodes.append(node)
            if self.step_read[j + 1]:
                inputs.append(window(j + 1, torch.zeros_like(x) if node is None else F.relu(node)))
            else:
                inputs.append(None)
        # ``combine`` for one position, over the live nodes only (the others are zero).
        mixed = weights @ torch.stack(nodes) if nodes else torch.zeros_like(x)
        return self.finish(mixed, x), later


def _op_step(op: nn.Module, inputs: torch.Tensor, reach: int) -> torch.Tensor:
    """A causal op's output at the newest position; ``inputs`` [n, C] end there (n - 1 >=
    ``reach``, the op's own: a shared queue may be longer, the op reads its last part)."""
    if reach == 0:  # skip: the newest input itself
        return inputs[-1]
    span = reach + 1
    return op.step(inputs if inputs.size(0) == span else inputs[inputs.size(0) - span :])


def _reads_windows(op: nn.Module) -> bool:
    """Whether ``op`` serves from its input's windows: the causal convolutions and pools."""
    return (isinstance(op, ConvOp) and not op.padding[1]) or (isinstance(op, PoolOp) and op.causal)


def _keeps_padding_zero(op: nn.Module) -> bool:
    """Whether ``op`` outputs zeros at left padding when its input is zero there."""
    return isinstance(op, nn.Identity) or (isinstance(op, PoolOp) and op.causal)


class Student(CellNetwork):
    """The retrained network: ``genotype.cells`` copies of the searched cell (own weights).

    ``positions``: "absolute" (a learned position embedding, as the supernet has) or
    "none" (the cells alone know the order; the student then streams exactly past
    ``max_len``, see ``serve.streaming``).
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        genotype: Genotype,
        dropout: float = 0.1,
        positions: str = "absolute",
    ):
        super().__init__(
            num_items,
            max_len,
            genotype.width,
            dropout,
            [StudentCell(genotype) for _ in range(genotype.cells)],
            positions,
        )
        self.genotype = genotype
        # The last position depends on this many latest items only (no attention).
        self.window = genotype.receptive_field()
        self.reach = genotype.cell_reach()

    def to_spec(self) -> dict[str, Any]:
        return {
            "kind": "student",
            "genotype": genotype_to_dict(self.genotype),
            "num_items": self.num_items,
            "max_len": self.max_len,
            "dropout": self.embedding_dropout.p,
            "positions": self.positions,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Self:
        genotype = genotype_from_dict(spec["genotype"])
        return cls(
            spec["num_items"],
            spec["max_len"],
            genotype,
            dropout=spec.get("dropout", 0.1),
            # Runs saved before the option existed all had absolute positions.
            positions=spec.get("positions", "absolute"),
        )

    def forward(self, items: torch.Tensor, positions: torch.Tensor | None = None) -> SeqOutput:
        return self.run_cells(items, lambda cell, x, mask: cell(x, mask), positions)

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor:
        """Scores at the last position, computed from the receptive field alone.

        Exactly equal to running the whole history: the last output never reads items
        before the window, and the window keeps the items' position indices. Inference
        cost then scales with the receptive field, not with ``max_len``; and each cell
        computes only the positions that later cells still read (``run_cells``'s
        ``trim``), about half of cells x window.
        """
        # A slice longer than the history keeps all of it: no shape-dependent branch, so
        # the method traces for export. [..., -n:] and select are one op each in a traced
        # graph, where [:, -n:] and [:, -1, :] add no-op slices of the other dimensions.
        # Without a position embedding the indices would be computed for nothing (and
        # traced into the exported graph).
        positions = item_positions(items)[..., -self.window :] if self.uses_positions else None
        return self.logits(self.last_output(items[..., -self.window :], positions))

    def last_output(
        self, items: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The last position's output [B, C] of ``items`` [B, n], n <= ``window`` (at most
        the receptive field: ``run_cells``'s ``trim``), at ``positions`` [B, n] (default:
        counted within ``items``; unused without a position embedding). Items before
        ``items`` read as padding, as in a left-padded history."""
        output = self.run_cells(items, lambda c, x, m: c(x, m), positions, trim=self.reach)
        return output.output.select(1, -1)

    def step_weights(self) -> list[torch.Tensor]:
        """Every cell's ``StudentCell.step_weights`` (fixed at inference: compute once)."""
        return [cell.step_weights() for cell in self.cells]

    def step_state(self) -> list[torch.Tensor]:
        """The queues of ``step`` before the first item: zeros, as left padding is held."""
        weight = self.item_embedding.weight
        return [
            weight.new_zeros(length, self.width)
            for cell in self.cells
            for length in cell.queue_lengths
            if length
        ]

    def step(
        self,
        item: int,
        position: int,
        queues: list[torch.Tensor],
        weights: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last output [C] of ``forward`` at a new last item (internal id ``item`` at
        ``position``, < max_len and used only with absolute positions) from the queues of
        the items before it (``step_state``); the queues one position later. ``weights``:
        ``step_weights()``, computed once by a caller that steps often. Causal op set and
        eval mode only (see ``serve.streaming``)."""
        x = self.item_embedding.weight[item]
        if self.uses_positions:
            x = x + self.position_embedding.embedding.weight[position]
        weights = self.step_weights() if weights is None else weights
        later: list[torch.Tensor] = []
        start = 0
        for cell, cell_weights in zip(self.cells, weights, strict=True):
            end = start + cell.queue_count
            x, cell_queues = cell.step(x, queues[start:end], cell_weights)
            later += cell_queues
            start = end
        return x, later


def inherit_weights(student: Student, supernet: Supernet) -> int:
    """Copy embeddings, the chosen ops, node weights, norms and head from the supernet.

    Every tensor of the student (parameters and buffers such as BatchNorm statistics) is
    taken from the supernet tensor of the same name; returns how many were copied. A
    student without positions has no position embedding: the supernet's is left behind.
    """
    genotype = student.genotype
    if genotype.op_set != supernet.op_set:
        raise UserError(
            f"the student uses the {genotype.op_set!r} op set but the supernet "
            f"searched {supernet.op_set!r}: it cannot inherit weights"
        )
    if student.width != supernet.width:
        raise UserError(
            f"the student's width {student.width} differs from the supernet's "
            f"{supernet.width}: search and retrain at the same width to inherit"
        )
    if (student.num_items, student.max_len) != (supernet.num_items, supernet.max_len):
        raise UserError(
            "the student and the supernet were built for different data "
            f"(items, max length): {(student.num_items, student.max_len)} vs "
            f"{(supernet.num_items, supernet.max_len)}"
        )
    source = supernet.state_dict()
    target = student.state_dict()
    missing = [name for name in target if name not in source]
    if missing:
        raise UserError(
            f"the supernet has no {missing[0]} for the student (more cells or "
            f"nodes than were searched?)"
        )
    student.load_state_dict({name: source[name] for name in target})
    return len(target)
