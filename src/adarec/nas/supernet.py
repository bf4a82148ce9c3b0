"""The supernet of the search: every op on every edge, one shared set of alphas.

K cells, each with its own weights, share ONE set of architecture parameters: for node j,
alpha_j of shape [j + 1, |ops|] (one row per incoming edge). Every forward runs one
architecture, given as per-node one-hot samples (``sample_architecture``: hard
straight-through Gumbel-softmax) or the argmax of alpha (``derived_weights``).
"""

from __future__ import annotations

import math
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from adarec.errors import UserError
from adarec.models.base import SeqOutput
from adarec.nas.cells import Cell, CellNetwork
from adarec.nas.genotype import Genotype, derive_genotype, input_name
from adarec.nas.operations import OP_SETS, make_op

MODES = ("single_path", "full")


class SearchCell(Cell):
    """A cell holding every op of the set on each of its edges (``nodes[j][i][op]``)."""

    def __init__(self, num_nodes: int, width: int, op_names: tuple[str, ...], op_set: str):
        super().__init__(num_nodes, width)
        self.op_names = op_names
        self.nodes = nn.ModuleList(
            nn.ModuleList(
                nn.ModuleDict({name: make_op(name, width, op_set) for name in op_names})
                for _ in range(j + 1)
            )
            for j in range(num_nodes)
        )

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        weights: list[torch.Tensor],
        choices: list[list[int]] | None,
    ) -> torch.Tensor:
        """``weights``: per node one-hot [j + 1, |ops|]; ``choices``: their argmax (single
        path) or None (full: every op weighted)."""
        states = [F.relu(x)]
        nodes = []
        for j, (edges, w) in enumerate(zip(self.nodes, weights, strict=True)):
            if choices is None:
                terms = (
                    sum(w[i, k] * edge[name](states[i]) for k, name in enumerate(self.op_names))
                    for i, edge in enumerate(edges)
                )
            else:
                # Single path (GDAS): only the chosen op runs; multiplying by its weight
                # (exactly 1 in the forward) keeps the straight-through gradient to alpha.
                terms = (
                    w[i, k] * edge[self.op_names[k]](states[i])
                    for (i, edge), k in zip(enumerate(edges), choices[j], strict=True)
                )
            node = sum(terms) * mask
            nodes.append(node)
            states.append(F.relu(node))
        return self.combine(nodes, x)


class Supernet(CellNetwork):
    """Embedding, K search cells (own weights, shared alphas), dropout + linear head.

    ``mode``: "full" computes all ops of every edge and sums them weighted by the one-hot
    sample (the paper); "single_path" computes only the sampled op (much cheaper). Both
    give the same forward value for the same sample.
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        width: int,
        cells: int,
        nodes: int,
        op_set: str = "causal",
        dropout: float = 0.1,
        mode: str = "single_path",
        alpha_init_std: float = 1e-2,
    ):
        if op_set not in OP_SETS:
            raise UserError(f"unknown op set {op_set!r}; choose one of {', '.join(OP_SETS)}")
        if mode not in MODES:
            raise UserError(f"unknown supernet mode {mode!r}; choose one of {', '.join(MODES)}")
        op_names = OP_SETS[op_set]
        super().__init__(
            num_items,
            max_len,
            width,
            dropout,
            [SearchCell(nodes, width, op_names, op_set) for _ in range(cells)],
        )
        self.op_set = op_set
        self.op_names = list(op_names)
        self.mode = mode
        self.alphas = nn.ParameterList(
            nn.Parameter(alpha_init_std * torch.randn(j + 1, len(op_names))) for j in range(nodes)
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "kind": "supernet",
            "num_items": self.num_items,
            "max_len": self.max_len,
            "width": self.width,
            "cells": len(self.cells),
            "nodes": len(self.alphas),
            "op_set": self.op_set,
            "dropout": self.embedding_dropout.p,
            "mode": self.mode,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Self:
        return cls(
            spec["num_items"],
            spec["max_len"],
            spec["width"],
            spec["cells"],
            spec["nodes"],
            op_set=spec["op_set"],
            dropout=spec["dropout"],
            mode=spec["mode"],
        )

    def genotype(self) -> Genotype:
        """The derived cell: the argmax op of alpha on every edge (DARTS's
        ``Network.genotype()``), used in as many cells as the supernet has."""
        return derive_genotype(
            list(self.alphas), self.op_names, self.op_set, len(self.cells), self.width
        )

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters alpha (one [j + 1, |ops|] tensor per node)."""
        return list(self.alphas)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except alpha."""
        alpha_ids = {id(a) for a in self.alphas}
        return [p for p in self.parameters() if id(p) not in alpha_ids]

    def sample_architecture(
        self, tau: float, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """Per node a [j + 1, |ops|] hard straight-through Gumbel-softmax sample.

        The forward value is exactly one-hot; the gradient is that of the soft sample
        softmax((log_softmax(alpha) + g) / tau). The Gumbel noise g is drawn on the CPU from
        ``generator``, so ranks seeded alike draw the same architecture on any device.
        """
        samples = []
        for alpha in self.alphas:
            uniform = torch.rand(alpha.shape, generator=generator, dtype=torch.float32)
            gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(torch.float32).tiny)))
            gumbel = gumbel.to(device=alpha.device, dtype=alpha.dtype)
            soft = torch.softmax((torch.log_softmax(alpha, dim=-1) + gumbel) / tau, dim=-1)
            hard = F.one_hot(soft.argmax(dim=-1), soft.size(-1)).to(soft.dtype)
            # soft - soft.detach() is exactly 0, so the value stays exactly one-hot.
            samples.append(hard + (soft - soft.detach()))
        return samples

    def derived_weights(self) -> list[torch.Tensor]:
        """Per node the one-hot argmax of alpha (the derived architecture; no gradient)."""
        return [F.one_hot(a.detach().argmax(dim=-1), a.size(-1)).to(a.dtype) for a in self.alphas]

    def forward(self, items: torch.Tensor, weights: list[torch.Tensor] | None = None) -> SeqOutput:
        """Run the architecture ``weights`` (per-node one-hot samples; None: the argmax)."""
        if weights is None:
            weights = self.derived_weights()
        # One device sync per node for the chosen op indices, shared by all cells.
        choices = None if self.mode == "full" else [w.argmax(dim=-1).tolist() for w in weights]
        return self.run_cells(items, lambda cell, x, mask: cell(x, mask, weights, choices))


def temperature(epoch: int, initial: float = 1.0, decay: float = 0.8, every: int = 5) -> float:
    """Gumbel-softmax temperature of an epoch: initial * decay ** floor(epoch / every)."""
    return initial * decay ** (epoch // every)


def alpha_summary(alphas: list[torch.Tensor]) -> dict:
    """softmax(alpha) per edge, for logging.

    ``edges``: [{"name": "cell_input -> node_0", "probs": [...], "entropy": nats}, ...];
    ``mean_entropy``: mean edge entropy (nats; uniform is log |ops|); ``max_prob``: the
    largest probability of any edge; ``mean_max_prob``: the mean of each edge's largest.
    """
    edges = []
    for j, alpha in enumerate(alphas):
        probs = torch.softmax(alpha.detach().float().cpu(), dim=-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)
        for i, row in enumerate(probs):
            edges.append(
                {
                    "name": f"{input_name(i)} -> node_{j}",
                    "probs": row.tolist(),
                    "entropy": float(entropy[i]),
                }
            )
    maxima = [max(e["probs"]) for e in edges]
    return {
        "edges": edges,
        "mean_entropy": math.fsum(e["entropy"] for e in edges) / len(edges),
        "max_prob": max(maxima),
        "mean_max_prob": math.fsum(maxima) / len(maxima),
    }
