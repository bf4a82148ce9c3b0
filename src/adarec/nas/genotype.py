"""The searched architecture as one small, readable value: derive, save, load, print, draw.

A genotype is the hand-off between search and retraining: the op set, and for every
intermediate node of the cell one ``(input, op)`` per incoming edge. Input 0 is the cell
input, input i > 0 is intermediate node i - 1. Every edge is kept, "none" ones included
(the argmax of alpha may pick "none"; such an edge contributes zeros). The same cell is
used in all ``cells`` cells of a student of width ``width``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adarec.errors import UserError
from adarec.io import atomic_write_json, read_json
from adarec.nas.operations import OP_SETS, left_reach

CELL_INPUT = "cell_input"


@dataclass(frozen=True)
class Genotype:
    """One searched cell (``nodes[j]``: the (input index, op) of node j's edges), K and width."""

    op_set: str
    nodes: tuple[tuple[tuple[int, str], ...], ...]
    cells: int
    width: int

    def cell_reach(self) -> int:
        """How far back one cell reads: the longest chain of op reaches through its DAG
        ("none" edges carry nothing). A cell's output at t depends on its input at
        t - cell_reach .. t alone."""
        reach = [0]  # the cell input
        for edges in self.nodes:
            reach.append(
                max((reach[i] + left_reach(op) for i, op in edges if op != "none"), default=0)
            )
        return max(reach)

    def receptive_field(self) -> int:
        """How many of the latest positions a student's last output depends on.

        The cell's reach times the number of cells, plus the position itself. Attention has
        no such bound; a cell network of pooling and convolutions does, which lets inference
        read only this many items (``Student.full_sort_predict``).
        """
        return self.cells * self.cell_reach() + 1


def input_name(index: int) -> str:
    """The readable name of an edge input: "cell_input", "node_0", "node_1", ..."""
    return CELL_INPUT if index == 0 else f"node_{index - 1}"


def derive_genotype(
    alphas: list[torch.Tensor], op_names: list[str], op_set: str, cells: int, width: int
) -> Genotype:
    """The discrete cell: the argmax op of alpha on every edge ("none" may win)."""
    nodes = tuple(
        tuple((i, op_names[int(row.argmax())]) for i, row in enumerate(alpha.detach()))
        for alpha in alphas
    )
    return Genotype(op_set, nodes, cells, width)


def random_genotype(op_set: str, nodes: int, cells: int, width: int, seed: int) -> Genotype:
    """A uniformly random cell of the space (the random-architecture baseline).

    Every edge of node j (j + 1 of them) gets an op drawn uniformly from the set without
    "none", so that, as in DARTS's random baseline, every edge carries an operation.
    """
    if op_set not in OP_SETS:
        raise UserError(f"unknown op set {op_set!r}; choose one of {', '.join(OP_SETS)}")
    rng = random.Random(seed)
    ops = [op for op in OP_SETS[op_set] if op != "none"]
    cell = tuple(tuple((i, rng.choice(ops)) for i in range(j + 1)) for j in range(nodes))
    return Genotype(op_set, cell, cells, width)


def genotype_to_dict(genotype: Genotype) -> dict[str, Any]:
    """The JSON form: op set, cells, width and nodes -> edges ({"input", "op"})."""
    return {
        "op_set": genotype.op_set,
        "cells": genotype.cells,
        "width": genotype.width,
        "nodes": [
            [{"input": input_name(i), "op": op} for i, op in node] for node in genotype.nodes
        ],
    }


def _positive_int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"genotype field {key!r} must be a positive integer, got {value!r}")
    return value


def _edge(edge: Any, node: int, ops: tuple[str, ...]) -> tuple[int, str]:
    if not isinstance(edge, dict) or set(edge) != {"input", "op"}:
        raise UserError(f"node_{node}: every edge must be an object with 'input' and 'op'")
    inputs = {input_name(i): i for i in range(node + 1)}
    if edge["input"] not in inputs:
        raise UserError(f"node_{node}: input {edge['input']!r} is not one of {', '.join(inputs)}")
    if edge["op"] not in ops:
        raise UserError(f"node_{node}: unknown op {edge['op']!r}; this op set has {', '.join(ops)}")
    return inputs[edge["input"]], edge["op"]


def genotype_from_dict(data: Any) -> Genotype:
    """Parse and validate the JSON form (``genotype_to_dict``); UserError if malformed."""
    if not isinstance(data, dict):
        raise UserError("a genotype must be a JSON object")
    missing = {"op_set", "cells", "width", "nodes"} - set(data)
    if missing:
        raise UserError(f"genotype lacks {', '.join(sorted(missing))}")
    op_set = data["op_set"]
    if op_set not in OP_SETS:
        raise UserError(f"unknown op set {op_set!r}; choose one of {', '.join(OP_SETS)}")
    cells, width = _positive_int(data, "cells"), _positive_int(data, "width")
    nodes = data["nodes"]
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, list) for n in nodes):
        raise UserError("genotype 'nodes' must be a non-empty list of lists of edges")
    parsed = []
    for j, node in enumerate(nodes):
        edges = tuple(_edge(edge, j, OP_SETS[op_set]) for edge in node)
        if len({i for i, _ in edges}) != len(edges):
            raise UserError(f"node_{j}: two edges from the same input")
        parsed.append(edges)
    return Genotype(op_set, tuple(parsed), cells, width)


def save_genotype(genotype: Genotype, path: Path) -> None:
    atomic_write_json(Path(path), genotype_to_dict(genotype))


def load_genotype(path: Path) -> Genotype:
    """Read a genotype file; UserError naming the file if it is missing or malformed."""
    path = Path(path)
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise UserError(f"genotype file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"genotype file {path} is not valid JSON: {error}") from None
    try:
        return genotype_from_dict(data)
    except UserError as error:
        raise UserError(f"genotype file {path}: {error}") from None


def genotype_to_text(genotype: Genotype) -> str:
    """One line per node (``node_1 = skip(cell_input) + causal_conv3(node_0)``) and the output."""
    lines = [
        f"cell ({genotype.op_set} ops), used in {genotype.cells} cells of width {genotype.width}:"
    ]
    for j, node in enumerate(genotype.nodes):
        terms = " + ".join(f"{op}({input_name(i)})" for i, op in node) or "0"
        lines.append(f"  node_{j} = {terms}")
    nodes = ", ".join(f"node_{j}" for j in range(len(genotype.nodes)))
    lines.append(f"  output = ReLU(LayerNorm(softmax(w) . [{nodes}])) + {CELL_INPUT}")
    return "\n".join(lines)


def draw_genotype(genotype: Genotype, png_path: Path) -> None:
    """A PNG of one cell: boxes for the input, nodes and output; an arrow per non-none edge."""
    # Imported here: matplotlib is only needed for the picture, not to use a genotype.
    import matplotlib.pyplot as plt

    from adarec.plots import save_figure

    count = len(genotype.nodes)
    fig, ax = plt.subplots(figsize=(2.4 * (count + 2), 4.2))
    box = {"boxstyle": "round,pad=0.4", "facecolor": "#e8eef7", "edgecolor": "#35577d"}
    names = [CELL_INPUT] + [f"node_{j}" for j in range(count)] + ["output"]
    for x, name in enumerate(names):
        ax.text(x, 0, name, ha="center", va="center", fontsize=10, bbox=box, zorder=3)

    def arrow(source: int, target: int, rad: float, label: str, style: str) -> None:
        ax.annotate(
            "",
            xy=(target, 0),
            xytext=(source, 0),
            zorder=2,
            arrowprops={
                "arrowstyle": "-|>",
                "linestyle": style,
                "color": "#333333",
                "shrinkA": 28,
                "shrinkB": 28,
                "connectionstyle": f"arc3,rad={rad}",
            },
        )
        if label:
            # The middle of an arc3 curve lies rad * length / 2 off the chord, measured on
            # the screen (display coordinates), below a left-to-right chord for rad > 0.
            (x0, y0), (x1, _) = ax.transData.transform([(source, 0), (target, 0)])
            middle = ax.transData.inverted().transform(((x0 + x1) / 2, y0 - rad * (x1 - x0) / 2))
            ax.text(
                *middle,
                label,
                ha="center",
                va="center",
                fontsize=8,
                zorder=4,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "linewidth": 0},
            )

    ax.set_xlim(-0.7, count + 1.7)
    ax.set_ylim(-1.0, 1.4)  # fixed before the labels: they are placed on screen
    for j, node in enumerate(genotype.nodes):
        for i, op in node:
            if op != "none":
                arrow(i, j + 1, 0.0 if j + 1 - i == 1 else -0.45, op, "-")
    for j in range(count):  # every node feeds the weighted sum of the cell output
        arrow(j + 1, count + 1, 0.0 if j + 1 == count else 0.3, "", "--")
    arrow(0, count + 1, 0.3, "+ residual", ":")
    ax.axis("off")
    ax.set_title(
        f"{genotype.op_set} cell (x{genotype.cells}, width {genotype.width}); "
        "dashed: weighted sum into the output",
        fontsize=10,
    )
    save_figure(fig, Path(png_path))
