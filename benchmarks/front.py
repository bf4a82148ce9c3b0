"""One search, every budget: the front against random cells and against separate searches.

Usage: python benchmarks/front.py --scene {ml-100k,ml-1m,order} [--run RUN_DIR]
       [--random 3] [--separate 10x,20x] [--set key=value ...] [--results PATH] [--quiet]

For the scene's pipeline run (``RUN_DIR``, default runs/front-SCENE; trained with the
scene's config and ``adarec run``'s defaults when not finished there, so the run directory
of the README main job can be given to reuse it):
1. The front (``adarec run`` builds it by default: RUN_DIR/front/front.json).
2. Searched vs random (``--random N``, default 3; 0 skips it): at every budget of the front,
   N random cells within that budget (uniform among the cells that fit, as the
   random_arch_budget baseline draws them), retrained exactly as the front's students are
   (same config, same seed, inherited supernet weights), into
   RUN_DIR/front/random/BUDGET/cell_K. Test NDCG@10 of the front's student, the mean of the
   random cells, and the paired difference with its standard error over the same test users.
3. Separate searches (``--separate B1,B2``, off by default: hours on ml-1m on 2 CPU cores):
   one search per budget (search.budget B) and its student, into RUN_DIR/separate/B, against
   the front's student derived at B from the one search (RUN_DIR/front/at/B, or the front's
   own retrained student when the derivation at B gives its cell): does one search give up
   accuracy?
4. The front's cost: what it added to its search (estimates, retraining, measuring) against
   one search plus one retraining of the selected student (issue 27: at most 2x).

Writes benchmarks/results/front_SCENE.json (or ``--results``) and a figure beside it
(test NDCG@10 against the batch-256 speed-up: front, random means, teacher). Finished stages
are reused, so the script can be interrupted and rerun.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from adarec.config import Config, load_config
from adarec.errors import UserError
from adarec.evaluate.latency import machine_description
from adarec.evaluate.metrics import per_example_gains
from adarec.io import atomic_write_json, read_json
from adarec.nas.budget import random_genotype_within_budget
from adarec.nas.front import Candidate, select_student
from adarec.nas.genotype import genotype_to_dict
from adarec.pipeline.front import FRONT_FILE, finished_student, front_cost
from adarec.pipeline.run import run_pipeline
from adarec.pipeline.search import run_search
from adarec.pipeline.student import rederived_cost_model, rederived_genotype, run_student
from adarec.runs import load_run_config, read_metrics, read_test_ranks, resolve_from_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
METRIC = "NDCG@10"
SCENES: dict[str, dict[str, Any]] = {
    "ml-100k": {"config": "configs/ml-100k.yaml", "set": ["data.dataset=ml-100k"]},
    "ml-1m": {"config": "configs/ml-1m.yaml", "set": ["data.dataset=ml-1m"]},
    "order": {"config": "configs/synthetic.yaml", "set": ["data.synthetic_pattern=order"]},
}


def finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").exists()


def gains(ranks: list[int]) -> np.ndarray:
    k = int(METRIC.split("@")[1])
    return per_example_gains(np.asarray(ranks, dtype=np.float64), [k])[METRIC]


def paired(own: list[int], others: list[list[int]]) -> dict[str, float]:
    """Mean of (own gain - mean of the others' gains) over the same users, and its standard
    error (users hard for every model cancel)."""
    if any(len(o) != len(own) for o in others):
        raise UserError("per-user ranks of different lengths: not scored on the same users")
    difference = gains(own) - np.mean([gains(o) for o in others], axis=0)
    se = float(difference.std(ddof=1) / math.sqrt(len(difference))) if len(own) > 1 else 0.0
    return {"difference": float(difference.mean()), "se": se}


def ensure_run(scene: str, run: Path, overrides: list[str], quiet: bool) -> Config:
    """The scene's pipeline run with its front (trained, or resumed, when not finished)."""
    spec = SCENES[scene]
    cfg = load_config(ROOT / spec["config"], [*spec["set"], "run.front=true", *overrides])
    if not (run / "front" / FRONT_FILE).exists():
        run_pipeline(cfg, run, quiet=quiet)
    return load_run_config(run / "search", overrides=overrides)


def random_cells(
    cfg: Config, run: Path, row: dict[str, Any], count: int, quiet: bool
) -> list[dict[str, Any]]:
    """``count`` random cells within ``row``'s budget, retrained as the front's students."""
    search_dir = run / "search"
    model = rederived_cost_model(search_dir, row["budget"])
    s = cfg.search
    out = []
    for k in range(count):
        genotype = random_genotype_within_budget(
            model, s.ops, s.nodes, s.cells, s.width, seed=cfg.seed + k
        )
        run_dir = run / "front" / "random" / row["budget"] / f"cell_{k}"
        if not finished(run_dir):
            variant = copy.deepcopy(cfg)
            variant.student.budget = ""  # the random cell is given
            run_student(variant, run_dir, search_dir, quiet, True, genotype=genotype, name="random")
        metrics = read_metrics(run_dir)
        if metrics["architecture"] != genotype_to_dict(genotype):
            raise UserError(f"{run_dir} holds another cell: remove it to retrain")
        out.append(
            {
                "run_dir": str(
                    run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir
                ),
                "test_ndcg10": metrics["test"]["full"][METRIC],
                "body_params": metrics["params"]["body"],
                "ranks": read_test_ranks(run_dir),
            }
        )
    return out


def searched_vs_random(
    cfg: Config, run: Path, front: dict[str, Any], count: int, quiet: bool
) -> list[dict[str, Any]]:
    rows = []
    for row in front["students"]:
        if not row["retrained"]:
            continue
        own_dir = resolve_from_run(row["run_dir"], run / "front")
        own_ranks = read_test_ranks(own_dir)
        try:
            randoms = random_cells(cfg, run, row, count, quiet)
        except UserError as error:  # no random cell of the space fits this budget
            rows.append(
                {"budget": row["budget"], "speedup": row["speedup"], "no_random": str(error)}
            )
            print(f"{row['budget']:>8}: {error}")
            continue
        mean = float(np.mean([r["test_ndcg10"] for r in randoms]))
        entry = {
            "budget": row["budget"],
            "speedup": row["speedup"],
            "front_test_ndcg10": row["test_ndcg10"],
            "front_test_se": row["test_se"],
            "random_test_ndcg10": [r["test_ndcg10"] for r in randoms],
            "random_body_params": [r["body_params"] for r in randoms],
            "random_mean_test_ndcg10": mean,
            "random_runs": [r["run_dir"] for r in randoms],
        }
        entry["front_minus_random"] = paired(own_ranks, [r["ranks"] for r in randoms])
        rows.append(entry)
        d = entry["front_minus_random"]
        print(
            f"{row['budget']:>8}: front {row['test_ndcg10']:.4f}, random mean {mean:.4f} "
            f"({count} cells), difference {d['difference']:+.4f} +- {d['se']:.4f}"
        )
    return rows


def front_student_at(cfg: Config, run: Path, budget: str, quiet: bool) -> Path:
    """The front's student at ``budget``: the one search's architecture weights derived again
    there and retrained, into RUN/front/at/BUDGET, unless a finished student of that cell
    is in RUN/front (the front's own, retrained with the same settings: reused, not trained
    twice)."""
    search_dir = run / "search"
    cell = genotype_to_dict(
        rederived_genotype(search_dir, rederived_cost_model(search_dir, budget))
    )
    derived = run / "front" / "at" / budget
    students = sorted((run / "front" / "students").glob("*"))
    reused = finished_student(cfg, cell, [*students, derived])
    if reused is not None:
        return reused
    at = copy.deepcopy(cfg)
    at.student.budget = budget
    run_student(at, derived, search_dir, quiet, resume=True)
    return derived


def separate_searches(
    cfg: Config, run: Path, budgets: list[str], quiet: bool
) -> list[dict[str, Any]]:
    """One search per budget and its student, against the front's student at that budget
    (derived from the one search's architecture weights, retrained alike)."""
    rows = []
    teacher_dir = run / "teacher"
    for budget in budgets:
        root = run / "separate" / budget
        variant = copy.deepcopy(cfg)
        variant.search.budget = budget
        variant.student.budget = ""
        if not finished(root / "search"):
            run_search(variant, root / "search", teacher_dir, quiet, resume=True)
        if not finished(root / "student"):
            run_student(variant, root / "student", root / "search", quiet, resume=True)
        separate = read_metrics(root / "student")
        derived = front_student_at(cfg, run, budget, quiet)
        one = read_metrics(derived)
        diff = paired(read_test_ranks(derived), [read_test_ranks(root / "student")])
        rows.append(
            {
                "budget": budget,
                "one_search_test_ndcg10": one["test"]["full"][METRIC],
                "separate_search_test_ndcg10": separate["test"]["full"][METRIC],
                "one_minus_separate": diff,
                # Modelled MACs of each cell: a separate search may under-spend its budget.
                "one_search_macs": one["cost"]["budget"]["modelled"],
                "separate_search_macs": separate["cost"]["budget"]["modelled"],
                "separate_search_seconds": read_metrics(root / "search")["train_seconds"],
                "separate_retrain_seconds": separate["train_seconds"],
                "one_search_student": str(derived),
            }
        )
        print(
            f"{budget}: one search {rows[-1]['one_search_test_ndcg10']:.4f}, separate "
            f"{rows[-1]['separate_search_test_ndcg10']:.4f}, difference "
            f"{diff['difference']:+.4f} +- {diff['se']:.4f}"
        )
    return rows


KEEPS = (0.9, 0.95, 0.97, 0.98, 0.99, 1.0, 1.02)


def keep_sweep(front: dict[str, Any]) -> list[dict[str, Any]]:
    """What each keep would select from this front (validation only, as adarec does), and
    what the selected student then scores on test: the measurement behind run.keep."""
    retrained = [r for r in front["students"] if r["retrained"]]
    candidates = [
        Candidate(r["budget"], r["valid_ndcg10"], r["cost"], r["macs"], r["latency_ms"]["1"])
        for r in retrained
    ]
    teacher = front["teacher"]
    rows = []
    for keep in KEEPS:
        chosen = select_student(candidates, teacher["valid_ndcg10"], keep).name
        row = next((r for r in retrained if r["budget"] == chosen), None)
        rows.append(
            {
                "keep": keep,
                "selected": chosen,
                "test_ratio": None
                if row is None
                else round(row["test_ndcg10"] / teacher["test_ndcg10"], 4),
                "test_within_one_se": None
                if row is None
                else teacher["test_ndcg10"] - row["test_ndcg10"]
                <= math.hypot(row["test_se"], teacher["test_se"]),
                "speedup": None if row is None else row["speedup"],
            }
        )
    return rows


def estimator_agreement(front: dict[str, Any]) -> dict[str, Any]:
    """How well the cheap estimate orders the retrained students (Kendall's tau over their
    validation NDCG@10): the estimate only decides which students are retrained."""
    pairs = [
        (r["estimate"]["valid_ndcg10"], r["valid_ndcg10"])
        for r in front["students"]
        if r["retrained"]
    ]
    concordant = discordant = 0
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            sign = (pairs[i][0] - pairs[j][0]) * (pairs[i][1] - pairs[j][1])
            concordant += sign > 0
            discordant += sign < 0
    total = concordant + discordant
    return {
        "pairs": [{"estimate": e, "retrained": v} for e, v in pairs],
        "kendall_tau": None if total == 0 else round((concordant - discordant) / total, 3),
        "retrained": len(pairs),
        "not_retrained": sum(not r["retrained"] for r in front["students"]),
    }


def plot(scene: str, front: dict[str, Any], versus: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    batch = (
        "256" if "256" in front["teacher"]["latency_ms"] else max(front["teacher"]["latency_ms"])
    )
    retrained = sorted(
        (r for r in front["students"] if r["retrained"]), key=lambda r: r["speedup"][batch]
    )
    ax.errorbar(
        [r["speedup"][batch] for r in retrained],
        [r["test_ndcg10"] for r in retrained],
        yerr=[r["test_se"] for r in retrained],
        fmt="o-",
        label="front (one search)",
        capsize=3,
    )
    versus = [v for v in versus if "no_random" not in v]
    if versus:
        ax.errorbar(
            [v["speedup"][batch] for v in versus],
            [v["random_mean_test_ndcg10"] for v in versus],
            yerr=[v["front_minus_random"]["se"] for v in versus],
            fmt="s--",
            label="random cells at the same budget (mean; paired s.e.)",
            capsize=3,
        )
    ax.axhline(front["teacher"]["test_ndcg10"], color="grey", ls=":", label="teacher")
    chosen = front["selected"]["name"]
    for r in retrained:
        if r["budget"] == chosen:
            ax.annotate(
                "selected",
                (r["speedup"][batch], r["test_ndcg10"]),
                xytext=(5, 8),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel(f"speed-up over the teacher at batch {batch} (serving path)")
    ax.set_ylabel("test NDCG@10 (full ranking)")
    ax.set_title(f"{scene}: the front of one search" + (" vs random cells" if versus else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", choices=sorted(SCENES), required=True)
    parser.add_argument("--run", help="pipeline run directory (default runs/front-SCENE)")
    parser.add_argument("--random", type=int, default=3, help="random cells per budget (0: none)")
    parser.add_argument("--separate", default="", help="budgets of separate searches: 10x,20x")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--results", help="JSON path (default results/front_SCENE.json)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.random < 0:
        parser.error("--random must be 0 (no random cells) or more")
    run = Path(args.run or f"runs/front-{args.scene}")
    try:
        cfg = ensure_run(args.scene, run, args.overrides, args.quiet)
        front = read_json(run / "front" / FRONT_FILE)
        versus = searched_vs_random(cfg, run, front, args.random, args.quiet) if args.random else []
        budgets = [b for b in args.separate.split(",") if b]
        separate = separate_searches(cfg, run, budgets, args.quiet) if budgets else []
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = read_json(run / "report.json") if (run / "report.json").exists() else {}
    result = {
        "scene": args.scene,
        "run": str(run),
        "command": "python benchmarks/front.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "teacher": front["teacher"],
        "sweep": front["sweep"],
        "front": [
            {
                k: r.get(k)
                for k in (
                    "budget",
                    "budgets",
                    "macs",
                    "params",
                    "retrained",
                    "not_retrained",
                    "dominated_by",
                    "estimate",
                    "valid_ndcg10",
                    "valid_se",
                    "test_ndcg10",
                    "test_se",
                    "latency_ms",
                    "speedup",
                    "retrain_seconds",
                )
            }
            for r in front["students"]
        ],
        "selected": front["selected"],
        "keep_sweep": keep_sweep(front),
        "estimator": estimator_agreement(front),
        "searched_vs_random": versus,
        "separate_searches": separate,
        "cost": front_cost(front),
        "pipeline_seconds": report.get("seconds"),
        "machine": machine_description(),
        "front_date": front["date"],
    }
    path = Path(args.results) if args.results else RESULTS / f"front_{args.scene}.json"
    atomic_write_json(path, result)
    plot(args.scene, front, versus, path.with_suffix(".png"))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
