"""Does the search adapt to the scene? The same defaults on several scenes, side by side.

Usage: python benchmarks/scenes.py [--only successor order ml-100k ml-1m] [--no-random]
       [--teacher SCENE=RUN_DIR ...] [--set key=value ...] [--out DIR] [--suffix @NAME]
       [--json FILE] [--quiet]

For every scene: train (or reuse) its teacher, search with adarec's defaults (budget 5x
over the teacher unless --set search.budget=...), retrain the derived student, and (unless
--no-random) retrain run.random_cells random cells that meet the same budget. Writes
benchmarks/results/scenes.json ({"scenes": {NAME: {"cell": <genotype>, ...}}}; scenes not
re-run keep their earlier entry) and benchmarks/results/scenes.png (the cells side by side).
Finished stages under runs/scenes/NAME are reused, so the script can be interrupted.
Runs that change a default to measure a lever write to another file (--json
search_levers.json), so that scenes.json holds the defaults only.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from typing import Any

from adarec.config import load_config
from adarec.io import atomic_write_json, read_json
from adarec.pipeline.run import run_pipeline
from adarec.runs import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# Two synthetic scenes whose planted structure needs different ops (adarec.data.synthetic):
# "successor" is expressed by the cell's residual path alone, "order" needs to know which
# item stands three positions back. Then the two real scenes.
SCENES: dict[str, dict[str, Any]] = {
    "successor": {
        "config": "configs/synthetic.yaml",
        "set": ["data.synthetic_pattern=successor"],
    },
    "order": {"config": "configs/synthetic.yaml", "set": ["data.synthetic_pattern=order"]},
    "ml-100k": {"config": "configs/ml-100k.yaml", "set": ["data.dataset=ml-100k"]},
    "ml-1m": {"config": "configs/ml-1m.yaml", "set": ["data.dataset=ml-1m"]},
}


def op_histogram(cell: dict[str, Any]) -> dict[str, int]:
    """How many edges of the cell use each op."""
    return dict(collections.Counter(e["op"] for node in cell["nodes"] for e in node))


def scene_summary(name: str, spec: dict[str, Any], out: Path, report: dict[str, Any]) -> dict:
    teacher, student = report["teacher"], report["student"]
    t_ndcg = teacher["test"]["full"]["NDCG@10"]
    s_ndcg = student["test"]["full"]["NDCG@10"]
    se = student["test"].get("standard_error", {}).get("full", {}).get("NDCG@10")
    search = read_metrics(out / "search")
    return {
        "config": spec["config"],
        "overrides": spec["set"],
        "cell": student["architecture"],
        "op_histogram": op_histogram(student["architecture"]),
        "budget": report["budget"],
        "teacher_model": teacher["model"],
        "teacher_ndcg10": t_ndcg,
        "student_ndcg10": s_ndcg,
        "student_ndcg10_se": se,
        "ndcg10_ratio": s_ndcg / t_ndcg if t_ndcg else None,
        "teacher_macs": teacher["macs"],
        "student_macs": student["macs"],
        "speedup": report["speedup"],
        "search_diagnostics": report["search"],
        "search_seconds": search["train_seconds"],
        "searched_vs_random": report["searched_vs_random"],
        "random_cells": {
            n: m["architecture"]
            for n, m in report["baselines"].items()
            if n.startswith("random_arch_budget_")
        },
    }


def draw_scenes(scenes: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """One column per scene, one row per edge, the chosen op written and coloured."""
    import matplotlib.pyplot as plt

    from adarec.nas.operations import ALL_OPS
    from adarec.plots import save_figure

    names = list(scenes)
    first = scenes[names[0]]["cell"]
    edges = [(j, e["input"]) for j, node in enumerate(first["nodes"]) for e in node]
    colours = plt.get_cmap("tab10")
    colour_of = {op: colours(i % 10) for i, op in enumerate(ALL_OPS)}
    fig, ax = plt.subplots(figsize=(2.6 * len(names) + 2.2, 0.55 * len(edges) + 1.6))
    for c, name in enumerate(names):
        cell = scenes[name]["cell"]
        ops = [e["op"] for node in cell["nodes"] for e in node]
        for r, op in enumerate(ops):
            ax.add_patch(
                plt.Rectangle(
                    (c, r), 0.96, 0.9, color=colour_of[op], alpha=0.35 + 0.5 * (op != "none")
                )
            )
            ax.text(c + 0.48, r + 0.45, op, ha="center", va="center", fontsize=8)
        ratio = scenes[name].get("ndcg10_ratio")
        budget = scenes[name].get("budget") or {}
        label = name + (f"\nNDCG ratio {ratio:.3f}" if ratio else "")
        if budget:
            label += f"\nbudget {budget['budget']}"
        ax.text(c + 0.48, -0.1, label, ha="center", va="bottom", fontsize=8)
    ax.set_yticks([r + 0.45 for r in range(len(edges))])
    ax.set_yticklabels([f"{inp} -> node_{j}" for j, inp in edges], fontsize=8)
    ax.set_xlim(-0.05, len(names))
    ax.set_ylim(len(edges), -1.4)  # rows top down, the scene labels above them
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="+", choices=list(SCENES), default=list(SCENES))
    parser.add_argument("--no-random", action="store_true", help="skip the random cells")
    parser.add_argument(
        "--teacher", action="append", default=[], help="SCENE=RUN_DIR: reuse a finished teacher"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="runs/scenes")
    parser.add_argument(
        "--suffix", default="", help="appended to each scene's name in the JSON (e.g. @10x)"
    )
    parser.add_argument(
        "--json", default="scenes.json", help="file under benchmarks/results (and its .png)"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    teachers = dict(item.split("=", 1) for item in args.teacher)
    path = RESULTS / args.json
    for name in args.only:
        spec = SCENES[name]
        cfg = load_config(ROOT / spec["config"], [*spec["set"], *args.overrides])
        out = Path(args.out) / name
        teacher = Path(teachers[name]) if name in teachers else None
        baselines = [] if args.no_random else ["random_arch_budget"]
        report = run_pipeline(cfg, out, teacher, baselines=baselines, quiet=args.quiet)
        summary = scene_summary(name, {**spec, "set": spec["set"] + args.overrides}, out, report)
        summary["command"] = " ".join(["python benchmarks/scenes.py", *sys.argv[1:]])
        summary["machine"] = report["machine"]
        summary["threads"] = report["threads"]
        summary["date"] = report["date"]
        # Read again just before writing: other scenes may have been written meanwhile.
        results = read_json(path) if path.exists() else {"scenes": {}}
        results["scenes"][name + args.suffix] = summary
        atomic_write_json(path, results)  # after every scene: an interrupted run keeps them
        print(
            f"{name}: cell {summary['op_histogram']}, NDCG@10 ratio {summary['ndcg10_ratio']:.3f}"
        )
    figure = path.with_suffix(".png")
    title = "derived cells per scene (same defaults)"
    if args.json != "scenes.json":
        title = f"derived cells ({args.json}: each column's overrides are in the JSON)"
    draw_scenes(read_json(path)["scenes"], figure, title)
    print(f"wrote {path} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
