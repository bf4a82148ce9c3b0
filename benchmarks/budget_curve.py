"""What each speed-up costs: students at several budgets beside the teacher, on one dataset.

Usage: python benchmarks/budget_curve.py --dataset ml-1m [--run runs/bench-adarec-ml-1m]
       [--searched 2x ...] [--derived 10x ...] [--out RUN/budgets] [--set key=value ...]
       [--student LABEL=RUN_DIR ...] [--no-measure] [--quiet]

Builds on a finished ``benchmarks/adarec_pipeline.py`` run (its teacher, search and student:
the point at the pipeline's own budget). Every budget in ``--searched`` gets its own search
with the pipeline's teacher and config (only ``search.budget`` changed) and its retraining.
Every budget in ``--derived`` is cheaper and approximate: the pipeline search's architecture
weights derived again and repaired to that budget (no new search), then retrained.
``--student LABEL=RUN_DIR`` adds a student retrained from the pipeline's search another way
(e.g. ``adarec finetune --set student.loss=ce``). Then the
teacher and every student are timed in one process on the same real histories (eager and
TorchScript, batch 1 and 256) and evaluated with seen items excluded beside the headline.
Writes benchmarks/results/budget_curve_DATASET.json and budget_curve_DATASET.png. Finished
stages are reused: several invocations with different budgets may train side by side, and a
last one with all of them measures.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from adarec.config import Config, load_config, parse_budget
from adarec.errors import UserError
from adarec.evaluate.latency import machine_description
from adarec.io import atomic_write_json
from adarec.nas.genotype import genotype_to_text
from adarec.pipeline.evaluate import excluded_seen_test
from adarec.pipeline.search import run_search
from adarec.pipeline.student import (
    cost_model_of_search,
    rederived_cost_model,
    run_student,
)
from adarec.plots import save_figure
from adarec.runs import load_run_config, read_metrics
from adarec.runtime.logs import setup_logging
from adarec.serve.measure import measure_runs

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("adarec")
RESULTS = ROOT / "benchmarks" / "results"
BACKENDS = ("eager", "torchscript")


def finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").exists()


def train_points(cfg: Config, run: Path, out: Path, args: argparse.Namespace) -> None:
    """Search and retrain (or derive and retrain) every requested budget not done yet."""
    teacher_dir = run / "teacher"
    needs = [teacher_dir] if args.searched else []
    needs += [run / "search"] if args.derived else []
    for stage in needs:
        if not finished(stage):
            raise UserError(f"{stage} is not finished: run benchmarks/adarec_pipeline.py first")
    for budget in args.searched:
        variant = copy.deepcopy(cfg)
        variant.search.budget = budget
        variant.student.budget = ""  # the searched cell itself
        search_dir, student_dir = out / f"searched-{budget}" / "search", out / f"searched-{budget}"
        if not finished(search_dir):
            run_search(variant, search_dir, teacher_dir, args.quiet, resume=True)
        if not finished(student_dir / "student"):
            run_student(variant, student_dir / "student", search_dir, args.quiet, resume=True)
    for budget in args.derived:
        student_dir = out / f"derived-{budget}" / "student"
        if finished(student_dir):
            continue
        variant = copy.deepcopy(cfg)
        variant.student.budget = budget
        run_student(variant, student_dir, run / "search", args.quiet, resume=True)


def points(
    run: Path, out: Path, searched: list[str], derived: list[str], extra: list[str]
) -> dict[str, dict]:
    """{label: {"dir", "kind", "budget", "search"}} of every student on the curve; ``extra``:
    "LABEL=RUN_DIR" students retrained from the pipeline's search some other way."""
    # The pipeline's student: the searched cell, or (student.budget) one derived again.
    rederived = load_run_config(run / "student").student.budget
    own = rederived or cost_model_of_search(run / "search").budget
    result = {
        f"{own} (pipeline)": {
            "dir": run / "student",
            "kind": "derived from its search" if rederived else "searched",
            "budget": own,
            "search": run / "search",
        }
    }
    for b in searched:
        result[f"{b} (searched)"] = {
            "dir": out / f"searched-{b}" / "student",
            "kind": "searched",
            "budget": b,
            "search": out / f"searched-{b}" / "search",
        }
    for b in derived:
        result[f"{b} (derived)"] = {
            "dir": out / f"derived-{b}" / "student",
            "kind": "derived from the pipeline's search",
            "budget": b,
            "search": run / "search",
        }
    for item in extra:
        label, sep, run_dir = item.partition("=")
        if not sep or not label or not run_dir:
            raise UserError(f"--student takes LABEL=RUN_DIR; got {item!r}")
        result[label] = {
            "dir": Path(run_dir),
            "kind": "retrained from the pipeline's search",
            "budget": own,
            "search": run / "search",
        }
    return result


def summarise(
    cfg: Config, run: Path, curve: dict[str, dict], repeats: int, warmup: int
) -> dict[str, Any]:
    dirs = {"teacher": run / "teacher", **{label: p["dir"] for label, p in curve.items()}}
    missing = [label for label, d in dirs.items() if not finished(d)]
    if missing:
        raise UserError(f"not trained yet: {', '.join(missing)} (run without --no-measure)")
    measured = measure_runs(
        dirs,
        cfg.bench.batch_sizes,
        repeats,
        warmup,
        cfg.bench.threads,
        backends=BACKENDS,
        histories_from=run / "student",
    )
    teacher = read_metrics(dirs["teacher"])
    t_full = teacher["test"]["full"]["NDCG@10"]
    t_sampled = teacher["test"]["sampled"]["NDCG@10"]
    t_unseen = excluded_seen_test(dirs["teacher"])["full"]["NDCG@10"]
    latency = measured.medians()
    models: dict[str, Any] = {
        "teacher": {
            "model": teacher["model"],
            "test_full_ndcg10": t_full,
            "test_sampled_ndcg10": t_sampled,
            "test_excluded_seen_ndcg10": t_unseen,
            "macs": measured.macs["teacher"],
            "params": teacher["params"],
            "latency_ms": latency["teacher"],
            "train_seconds": teacher["train_seconds"],
        }
    }
    for label, p in curve.items():
        m = read_metrics(p["dir"])
        full = m["test"]["full"]["NDCG@10"]
        unseen = excluded_seen_test(p["dir"])["full"]["NDCG@10"]
        sampled = m["test"]["sampled"]["NDCG@10"]
        se = m["test"].get("standard_error", {}).get("full", {}).get("NDCG@10")
        model = measured.models[label][0]
        if p["kind"].startswith("derived"):
            target = rederived_cost_model(p["search"], p["budget"])
        else:
            target = cost_model_of_search(p["search"])
        models[label] = {
            "kind": p["kind"],
            "budget": p["budget"],
            "retraining_loss": load_run_config(p["dir"]).student.loss,
            "run_dir": str(p["dir"]),
            "cell": genotype_to_text(model.genotype),
            "modelled_macs": target.of_genotype(model.genotype),
            "target_macs": target.target,
            "macs": measured.macs[label],
            "params": m["params"],
            "test_full_ndcg10": full,
            "test_full_ndcg10_se": se,
            "test_sampled_ndcg10": sampled,
            "test_excluded_seen_ndcg10": unseen,
            "ratio_full": round(full / t_full, 4),
            "ratio_excluded_seen": round(unseen / t_unseen, 4),
            "ratio_sampled": round(sampled / t_sampled, 4),
            "latency_ms": latency[label],
            "speedup": {
                backend: {
                    b: round(latency["teacher"][backend][b] / latency[label][backend][b], 3)
                    for b in latency[label][backend]
                }
                for backend in BACKENDS
            },
            "epochs": m["epochs"],
            "train_seconds": m["train_seconds"],
        }
    return models


def plot_curve(models: dict[str, Any], path: Path, batch: str) -> None:
    """Student/teacher NDCG@10 against the speed-up at ``batch`` (both backends)."""
    import matplotlib.pyplot as plt  # adarec.plots has chosen the file backend

    fig, ax = plt.subplots(figsize=(6, 4))
    for backend, marker in zip(BACKENDS, ("o", "s"), strict=True):
        for label, m in models.items():
            if label == "teacher":
                continue
            x, y = m["speedup"][backend][batch], m["ratio_full"]
            ax.scatter([x], [y], marker=marker, s=40, label=f"{label}, {backend}")
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.axhline(0.95, color="grey", linestyle="--", linewidth=1)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"speed-up over the teacher at batch {batch} (log scale)")
    ax.set_ylabel("student / teacher test NDCG@10 (full ranking)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="lower left")
    ax.set_title("what each speed-up costs")
    save_figure(fig, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--config", default=None)
    parser.add_argument("--run", default=None, help="finished adarec_pipeline.py run")
    parser.add_argument("--out", default=None)
    parser.add_argument("--searched", nargs="*", default=[])
    parser.add_argument("--derived", nargs="*", default=[])
    parser.add_argument(
        "--student", dest="extra", action="append", default=[], help="LABEL=RUN_DIR, repeated"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-measure", action="store_true", help="train only")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    config = args.config or ROOT / "configs" / f"{args.dataset}.yaml"
    cfg = load_config(config, [f"data.dataset={args.dataset}", *args.overrides])
    run = Path(args.run or f"runs/bench-adarec-{args.dataset}")
    out = Path(args.out) if args.out else run / "budgets"
    try:
        for b in [*args.searched, *args.derived]:
            parse_budget(b)
        setup_logging(out, args.quiet)
        train_points(cfg, run, out, args)
        if args.no_measure:
            return 0
        curve = points(run, out, args.searched, args.derived, args.extra)
        models = summarise(cfg, run, curve, args.repeats, args.warmup)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = RESULTS / f"budget_curve_{args.dataset}.json"
    largest = str(max(cfg.bench.batch_sizes))
    plot_curve(models, path.with_suffix(".png"), largest)
    atomic_write_json(
        path,
        {
            "dataset": args.dataset,
            "config": str(config),
            "overrides": args.overrides,
            "command": " ".join(["python benchmarks/budget_curve.py", *sys.argv[1:]]),
            "machine": machine_description(),
            "threads": cfg.bench.threads or torch.get_num_threads(),
            "models": models,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
