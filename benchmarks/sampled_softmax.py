"""What does the sampled softmax cost in accuracy? The same training, full vs sampled.

Usage: python benchmarks/sampled_softmax.py --config configs/ml-1m.yaml --out DIR
       [--run RUN_DIR] [--negatives 1024] [--proposal popularity] [--device cuda]
       [--set key=value ...] [--results PATH] [--arm full|sampled] [--quiet]

Trains the teacher of ``--config`` twice, same schedule and seed: with the full softmax
(DIR/teacher-full) and with the sampled one (``sampled_softmax.min_items=0``,
``--negatives`` shared negatives from ``--proposal``, log-Q corrected; DIR/teacher-sampled).
With ``--run`` (a finished pipeline run: its search/ is reused) the student is also
retrained twice from that search with the run's student settings (DIR/student-full,
DIR/student-sampled). Evaluation is full ranking for every arm. Writes
benchmarks/results/sampled_softmax_DATASET.json (or ``--results``): per arm test NDCG@10
and its standard error over users, training seconds; sampled - full, paired over the same
test users, and as a share of full. Finished arms are reused, so the script can be
interrupted and rerun (with the same ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

from adarec.config import Config, load_config
from adarec.errors import UserError
from adarec.evaluate.latency import machine_description
from adarec.io import atomic_write_json
from adarec.pipeline.report import paired_standard_error
from adarec.pipeline.student import run_student
from adarec.pipeline.teacher import train_teacher
from adarec.runs import load_run_config, read_metrics, read_test_ranks
from adarec.runtime.logs import setup_logging

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("full", "sampled")
METRIC = "NDCG@10"


def arm_config(cfg: Config, arm: str, negatives: int, proposal: str) -> Config:
    """``cfg`` with every training loss over the whole catalogue or over sampled candidates."""
    variant = copy.deepcopy(cfg)
    ss = variant.sampled_softmax
    ss.negatives, ss.proposal = negatives, proposal
    # full: a threshold no catalogue reaches; sampled: every catalogue samples.
    ss.min_items = 2**62 if arm == "full" else 0
    return variant


def train_arm(stage: str, cfg: Config, arm_dir: Path, run: Path | None, quiet: bool) -> None:
    if (arm_dir / "metrics.json").exists():
        return  # finished earlier: reused
    if stage == "teacher":
        train_teacher(cfg, arm_dir, quiet, resume=True)
    else:
        run_student(cfg, arm_dir, run / "search", quiet, resume=True)


def summary(arm_dir: Path) -> dict[str, Any]:
    metrics = read_metrics(arm_dir)
    return {
        "dir": str(arm_dir),
        "test_full_ndcg10": metrics["test"]["full"][METRIC],
        "test_full_ndcg10_se": metrics["test"]["standard_error"]["full"][METRIC],
        "epochs": metrics["epochs"],
        "train_seconds": metrics["train_seconds"],
    }


def compare(out: Path, stage: str, arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """sampled - full on test NDCG@10, paired over the test users."""
    full, sampled = (arms[a]["test_full_ndcg10"] for a in ARMS)
    ranks = {arm: read_test_ranks(out / f"{stage}-{arm}") for arm in ARMS}
    se = None
    if ranks["full"] is not None and ranks["sampled"] is not None:
        se = paired_standard_error(ranks["sampled"], [ranks["full"]], METRIC)
    return {
        "difference": sampled - full,
        "difference_se": se,
        "relative": (sampled - full) / full if full else None,
        "within_2_percent": sampled >= 0.98 * full,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, help="where the arms' runs go")
    parser.add_argument("--run", help="finished pipeline run whose search/ the students reuse")
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--proposal", default="popularity", choices=("popularity", "uniform"))
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--results", default=None)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--arm",
        choices=ARMS,
        help="train this arm only (the arms in parallel: one process each, 1 thread); "
        "rerun without --arm to compare them once both have finished",
    )
    args = parser.parse_args()
    out = Path(args.out)
    run = Path(args.run) if args.run else None
    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    result: dict[str, Any] = {}
    try:
        base = {"teacher": load_config(args.config, overrides)}
        if run is not None:
            base["student"] = load_run_config(run / "search", overrides=overrides)
        setup_logging(out, args.quiet)
        for stage, cfg in base.items():
            arms = {}
            for arm in [args.arm] if args.arm else ARMS:
                arm_dir = out / f"{stage}-{arm}"
                variant = arm_config(cfg, arm, args.negatives, args.proposal)
                train_arm(stage, variant, arm_dir, run, args.quiet)
                arms[arm] = summary(arm_dir)
            if not args.arm:
                result[stage] = {"arms": arms, "sampled_minus_full": compare(out, stage, arms)}
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.arm:
        print(f"trained the {args.arm} arm(s) in {out}; rerun without --arm to compare")
        return 0
    dataset = base["teacher"].data.dataset
    path = Path(args.results) if args.results else RESULTS / f"sampled_softmax_{dataset}.json"
    atomic_write_json(
        path,
        {
            "dataset": dataset,
            "negatives": args.negatives,
            "proposal": args.proposal,
            "seed": base["teacher"].seed,
            "overrides": overrides,
            "command": " ".join(["python benchmarks/sampled_softmax.py", *sys.argv[1:]]),
            "machine": machine_description(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **result,
        },
    )
    print(f"wrote {path}")
    for stage, r in result.items():
        for arm, a in r["arms"].items():
            print(
                f"{stage} {arm:>7}: NDCG@10 {a['test_full_ndcg10']:.4f} "
                f"+- {a['test_full_ndcg10_se']:.4f} ({a['train_seconds']:.0f} s)"
            )
        c = r["sampled_minus_full"]
        se = "?" if c["difference_se"] is None else f"{c['difference_se']:.4f}"
        print(f"{stage} sampled - full: {c['difference']:+.4f} +- {se} ({c['relative']:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
