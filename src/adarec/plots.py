"""Plots a person would rather look at than read: training curves and more."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from adarec.io import atomic_write_bytes  # noqa: E402
from adarec.runtime import distributed as dist  # noqa: E402


def save_figure(fig: Any, path: Path) -> None:
    """Write a figure atomically (rank 0 only) and release it.

    Drawn in memory first: a process killed while drawing (the slow part) leaves no
    temporary file beside ``path``."""
    try:
        if dist.is_main():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
            atomic_write_bytes(Path(path), buffer.getbuffer())
    finally:
        plt.close(fig)


def plot_training_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """Training losses and validation NDCG@10 / HR@10 (full ranking) per epoch."""
    if not history:
        return
    epochs = [h["epoch"] + 1 for h in history]
    loss_keys = [k for k in history[-1] if k in ("loss", "ce", "emb", "hid", "logit", "penalty")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in loss_keys:
        left.plot(epochs, [h.get(key, float("nan")) for h in history], label=key)
    left.set_xlabel("epoch")
    left.set_ylabel("training loss")
    left.legend(fontsize=8)
    evaluated = [h for h in history if "valid" in h]
    for metric in ("NDCG@10", "HR@10"):
        right.plot(
            [h["epoch"] + 1 for h in evaluated],
            [h["valid"]["full"][metric] for h in evaluated],
            marker=".",
            label=metric,
        )
    right.set_xlabel("epoch")
    right.set_ylabel("validation (full ranking)")
    right.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_alpha_history(history: list[dict[str, Any]], op_names: list[str], path: Path) -> None:
    """softmax(alpha) of every edge over the search epochs: one small panel per edge, and
    one for the expected cost against the budget's target when the search had a budget."""
    records = [h for h in history if "alpha_probs" in h]
    if not records:
        return
    edges = records[-1]["alpha_probs"]
    epochs = [h["epoch"] + 1 for h in records]
    with_cost = all("expected_cost" in h for h in records)
    panels = len(edges) + with_cost
    cols = min(3, panels)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for index, edge in enumerate(edges):
        ax = axes[index // cols][index % cols]
        for op_index, op in enumerate(op_names):
            ax.plot(epochs, [h["alpha_probs"][index]["probs"][op_index] for h in records], label=op)
        ax.set_title(edge["name"], fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch", fontsize=8)
    if with_cost:
        ax = axes[len(edges) // cols][len(edges) % cols]
        target = records[-1]["cost_target"]
        ax.plot(epochs, [h["expected_cost"] / target for h in records], color="black")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_title("expected cost / budget target", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
    for index in range(panels, rows * cols):
        axes[index // cols][index % cols].axis("off")
    axes[0][0].set_ylabel("softmax(alpha)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(len(op_names), 5),
        fontsize=8,
        bbox_to_anchor=(0.5, -0.02 - 0.03 * (len(op_names) > 5)),
    )
    fig.suptitle("architecture weights over the search")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    save_figure(fig, path)


def plot_accuracy_latency(points: dict[str, tuple[float, float]], path: Path, batch: str) -> None:
    """Full-ranking test NDCG@10 against latency (log scale) for every model."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, (latency, ndcg) in points.items():
        ax.scatter([latency], [ndcg], s=40)
        ax.annotate(name, (latency, ndcg), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"median latency at batch {batch} (ms, log scale)")
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.grid(True, alpha=0.3)
    ax.set_title("accuracy against serving latency")
    save_figure(fig, path)


def plot_front(
    front: dict[str, Any], path: Path, others: dict[str, tuple[float, float]] | None = None
) -> None:
    """The front of one search (front.json's content), two panels.

    Left: validation NDCG@10 of the retrained students against their measured latency at
    the smallest batch (serving path, log scale), the teacher and ``others`` (the run's
    baselines: {name: (ms at that batch, validation NDCG@10)}) on the same axes, the keep
    threshold dashed, the selected student starred. Right: every derived student's
    estimated validation NDCG@10 (± one standard error) against its MACs per history,
    retrained ones filled.
    """
    teacher, students = front["teacher"], front["students"]
    retrained = [s for s in students if s["retrained"]]
    batch = min(teacher["latency_ms"], key=int)
    selected = front["selected"]["name"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    points = sorted((s["latency_ms"][batch], s["valid_ndcg10"], s) for s in retrained)
    left.plot([p[0] for p in points], [p[1] for p in points], "-o", color="#35577d", ms=5)
    for x, y, s in points:
        left.errorbar(x, y, yerr=s["valid_se"], color="#35577d", capsize=2, alpha=0.5)
        left.annotate(s["budget"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if s["budget"] == selected:
            left.scatter([x], [y], marker="*", s=260, color="#d1495b", zorder=4, label="selected")
    left.scatter(
        [teacher["latency_ms"][batch]],
        [teacher["valid_ndcg10"]],
        marker="s",
        color="black",
        zorder=4,
        label=f"teacher ({teacher['model']})",
    )
    for name, (x, y) in (others or {}).items():
        left.scatter([x], [y], marker="^", color="#8a8a8a", zorder=3)
        left.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    keep = front["selected"]["keep"]
    if keep is not None:
        left.axhline(
            keep * teacher["valid_ndcg10"],
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"keep {keep:g} x teacher",
        )
    left.set_xscale("log")
    left.set_xlabel(f"latency at batch {batch}, serving path (ms, log scale)")
    left.set_ylabel("validation NDCG@10 (retrained)")
    left.legend(fontsize=8)
    left.grid(True, alpha=0.3)
    for s in students:
        right.errorbar(
            s["macs"] / 1e6,
            s["estimate"]["valid_ndcg10"],
            yerr=s["estimate"]["valid_se"],
            fmt="o",
            color="#35577d",
            mfc="#35577d" if s["retrained"] else "white",
            capsize=2,
        )
        right.annotate(
            s["budget"],
            (s["macs"] / 1e6, s["estimate"]["valid_ndcg10"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    right.scatter(  # the teacher's real validation NDCG@10 at its cost, for scale
        [teacher["macs"] / 1e6],
        [teacher["valid_ndcg10"]],
        marker="s",
        color="black",
        zorder=4,
        label="teacher (trained)",
    )
    right.set_xscale("log")
    right.set_xlabel("MMACs per history (log scale)")
    right.set_ylabel(f"estimated validation NDCG@10 ({front['estimate_epochs']} epochs)")
    right.legend(fontsize=8)
    right.grid(True, alpha=0.3)
    fig.suptitle("one search, every budget: the front (filled: retrained)")
    fig.tight_layout()
    save_figure(fig, path)
