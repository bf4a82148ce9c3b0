"""What the supernet and the student share: the network around the cells, and a cell's output.

Both are built so that their module and parameter names match (``cells.k.nodes.j.i.<op>``
for the op on node j's edge from input i), which lets a student inherit the supernet's
weights of the chosen ops by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from adarec.models.base import CandidateScores, SeqOutput, SequentialRecommender
from adarec.models.layers import PositionEmbedding, init_weights, padding_mask


class Cell(nn.Module):
    """A cell's output: ReLU(LayerNorm(sum_n softmax(w)_n * node_n)) + cell input.

    Subclasses compute the nodes; every edge computes op(ReLU(x)), so edges read the
    ReLU of the cell input and of every earlier node.
    """

    def __init__(self, num_nodes: int, width: int):
        super().__init__()
        self.node_weights = nn.Parameter(torch.zeros(num_nodes))
        self.norm = nn.LayerNorm(width)

    def combine(self, nodes: list[torch.Tensor], cell_input: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.node_weights, dim=0)
        # Folded from the first node, not from 0 as sum() would: one op fewer to dispatch.
        mixed = weights[0] * nodes[0]
        for n in range(1, len(nodes)):
            mixed = mixed + weights[n] * nodes[n]
        return self.finish(mixed, cell_input)

    def finish(self, mixed: torch.Tensor, cell_input: torch.Tensor) -> torch.Tensor:
        """The cell's output from its nodes' weighted sum: ReLU(LayerNorm(mixed)) + input
        (shared by ``combine`` and a student cell's per-event step)."""
        return F.relu(self.norm(mixed)) + cell_input


# How a network knows where an item sits: "absolute" adds a learned embedding of its
# position counted from the oldest real item (``item_positions``); "none" adds nothing
# (causal convolutions and pools know the order locally), so an output depends on the
# latest items alone and not on how far they are from the start of the served window.
POSITIONS = ("absolute", "none")


class CellNetwork(SequentialRecommender):
    """Item (+ position) embedding, a stack of cells, and a dropout + linear head.

    ``positions`` (``POSITIONS``): with "none" the network has no position embedding at
    all (``position_embedding`` is None): nothing to train, inherit or count.
    ``uses_positions`` says which, for code that reads the embedding's weight directly.

    Padding positions are zeroed after the embedding, after every cell and after every
    node that a later node reads (a student zeroes only those nodes that can be nonzero
    there), so padding never reaches a real position: a history's outputs do not depend
    on how many pads precede it.
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        width: int,
        dropout: float,
        cells: list[Cell],
        positions: str = "absolute",
    ):
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}; got {positions!r}")
        self.num_items = num_items
        self.max_len = max_len
        self.width = width
        self.hidden_size = width  # the name the teachers use for their width
        self.positions = positions
        self.uses_positions = positions == "absolute"
        self.item_embedding = nn.Embedding(num_items + 1, width, padding_idx=0)
        # None rather than an unused module: no parameter without a gradient in the
        # optimizer, and the parameter count is the model's own.
        self.position_embedding = PositionEmbedding(max_len, width) if self.uses_positions else None
        self.embedding_dropout = nn.Dropout(dropout)
        self.cells = nn.ModuleList(cells)
        self.head_dropout = nn.Dropout(dropout)
        self.output_layer = nn.Linear(width, num_items + 1)
        self.apply(init_weights)

    def run_cells(
        self,
        items: torch.Tensor,
        cell_forward: Callable[[Cell, torch.Tensor, torch.Tensor], torch.Tensor],
        positions: torch.Tensor | None = None,
        trim: int | None = None,
    ) -> SeqOutput:
        """Embed, then ``cell_forward(cell, x, mask)`` for every cell; mask: [B, L, 1].

        ``positions``: the items' position indices when ``items`` is the tail of a longer
        history (default: counted within ``items``). ``trim``: how far back one cell reads
        (``Genotype.cell_reach``), when only the last position's output is wanted and
        ``items`` holds at most the last K * trim + 1 positions (the receptive field):
        cell k of K then runs on its input's last (K - k) * trim + 1 positions. Its outputs
        at the first ``trim`` of them are wrong (the cut reads as padding) and are exactly
        the ones the next cut drops, so the last output is unchanged; the hidden states
        shrink. Without a position embedding ``positions`` is unused.
        """
        h = self.item_embedding(items)
        if self.position_embedding is not None:
            h = h + self.position_embedding(items, positions)
        mask = padding_mask(items).unsqueeze(-1).to(h.dtype)
        h = self.embedding_dropout(h) * mask
        embedding = h
        hidden_states = []
        for k, cell in enumerate(self.cells):
            # The first cell reads all of the receptive field: nothing to cut (a no-op
            # slice is still an op to dispatch).
            if trim is not None and k > 0:
                keep = (len(self.cells) - k) * trim + 1
                h, mask = h[:, -keep:], mask[:, -keep:]
            h = cell_forward(cell, h, mask) * mask
            hidden_states.append(h)
        return SeqOutput(embedding=embedding, hidden_states=hidden_states, output=h)

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """Head: dropout, then the linear layer over [padding] + items."""
        return self.output_layer(self.head_dropout(output))

    def item_logits(self, output: torch.Tensor) -> torch.Tensor:
        """The head over the real items only (see ``SequentialRecommender.item_logits``)."""
        return super().item_logits(self.head_dropout(output))

    def candidate_scores(
        self, output: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
    ) -> CandidateScores:
        """The head on the sampled candidates only (see ``SequentialRecommender``)."""
        return super().candidate_scores(self.head_dropout(output), targets, negatives)
