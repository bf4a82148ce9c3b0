"""Does the student need absolute positions? The same retraining with and without them.

Usage: python benchmarks/positions.py RUN_DIR --out DIR [--device cuda] [--set key=value ...]
       [--results PATH] [--quiet]

``RUN_DIR``: a finished pipeline run (``adarec run`` or benchmarks/adarec_pipeline.py), of
which the teacher (teacher/) and the search (search/) are reused. Its student stage is
retrained twice with the run's config (the student's own when RUN_DIR/student exists, else
the search's: same schedule, same seed), once per ``student.positions``: "absolute" (a
learned position embedding, the default) into DIR/student-absolute and "none" (no position
embedding: the student streams per event in O(1) past ``max_len``) into DIR/student-none.
``--set`` overrides that config (e.g. ``--set student.epochs=1`` for a smoke run). Both are
evaluated on the test set by the stage itself (full ranking). Writes
benchmarks/results/positions_DATASET.json (or ``--results``): per arm test NDCG@10 and its
standard error over users, parameters, training seconds and whether it streams exactly for
every event; the paired difference none - absolute with its standard error over users (both
arms rank the same test users); and the machine. Finished arms are reused, so the script can
be interrupted and rerun.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adarec.config import Config
from adarec.errors import UserError
from adarec.evaluate.latency import machine_description
from adarec.io import atomic_write_json
from adarec.pipeline.report import paired_standard_error
from adarec.pipeline.student import run_student
from adarec.runs import load_run_config, load_run_model, read_metrics, read_test_ranks
from adarec.runtime.distributed import resolve_device
from adarec.runtime.logs import setup_logging
from adarec.serve.streaming import StudentStreamer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("absolute", "none")
METRIC = "NDCG@10"


def finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").exists()


def run_config(run: Path, overrides: list[str]) -> Config:
    """The config the run's student stage was trained with, layered with ``overrides``."""
    for stage in ("teacher", "search"):
        if not finished(run / stage):
            raise UserError(f"{run / stage} is not a finished stage: give a finished pipeline run")
    source = run / "student" if (run / "student" / "config.yaml").is_file() else run / "search"
    return load_run_config(source, overrides=overrides)


def retrain(cfg: Config, run: Path, out: Path, positions: str, quiet: bool) -> dict[str, Any]:
    """The run's student stage with ``student.positions`` set; its metrics and wall time.

    A finished arm is reused (its wall time is then None: it was not trained here)."""
    arm_dir = out / f"student-{positions}"
    if finished(arm_dir):
        return {"metrics": read_metrics(arm_dir), "wall_seconds": None}
    variant = copy.deepcopy(cfg)
    variant.student.positions = positions
    started = time.perf_counter()
    metrics = run_student(variant, arm_dir, run / "search", quiet, resume=True)
    return {"metrics": metrics, "wall_seconds": round(time.perf_counter() - started, 2)}


def arm_summary(arm_dir: Path, trained: dict[str, Any]) -> dict[str, Any]:
    metrics = trained["metrics"]
    model, _ = load_run_model(arm_dir)
    streamer = StudentStreamer(model) if model.genotype.op_set == "causal" else None
    return {
        "dir": str(arm_dir),
        "test_full_ndcg10": metrics["test"]["full"][METRIC],
        "test_full_ndcg10_se": metrics["test"]["standard_error"]["full"][METRIC],
        "test_users": metrics["test"].get("num_users"),
        "params": metrics["params"],
        "epochs": metrics["epochs"],
        # The stage's own training time (resumed processes included).
        "train_seconds": metrics["train_seconds"],
        "seconds_per_epoch": round(metrics["train_seconds"] / max(metrics["epochs"], 1), 3),
        "wall_seconds": trained["wall_seconds"],
        "receptive_field": model.window,
        "max_len": model.max_len,
        # None: every event is one incremental step, however long the history.
        "streams_exactly_for": None if streamer is None else streamer.exact_events,
        "per_event_streaming": streamer is not None,
    }


def compare(out: Path, arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """none - absolute on test NDCG@10, paired over users when both kept their ranks."""
    difference = arms["none"]["test_full_ndcg10"] - arms["absolute"]["test_full_ndcg10"]
    ranks = {arm: read_test_ranks(out / f"student-{arm}") for arm in ARMS}
    if ranks["none"] is not None and ranks["absolute"] is not None:
        se = paired_standard_error(ranks["none"], [ranks["absolute"]], METRIC)
        paired = True
    else:  # unpaired: the arms' own errors in quadrature (overstates it)
        errors = [arms[arm]["test_full_ndcg10_se"] for arm in ARMS]
        se, paired = math.sqrt(math.fsum(e**2 for e in errors)), False
    return {
        "metric": f"test full-ranking {METRIC}",
        "difference": difference,
        "difference_se": se,
        "paired": paired,
        "significant": abs(difference) > 2 * se,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", help="finished pipeline run (teacher/, search/)")
    parser.add_argument("--out", required=True, help="where the two retrainings go")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: config)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--results", default=None, help="JSON to write (default: results/)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    run, out = Path(args.run), Path(args.out)
    overrides = [*args.overrides, *([f"device={args.device}"] if args.device else [])]
    try:
        cfg = run_config(run, overrides)
        setup_logging(out, args.quiet)
        device = resolve_device(cfg.device)
        if device.type == "cuda":
            # CUDA's context is made here, not inside the first arm's training time.
            torch.zeros(1, device=device)
        trained = {arm: retrain(cfg, run, out, arm, args.quiet) for arm in ARMS}
        arms = {arm: arm_summary(out / f"student-{arm}", trained[arm]) for arm in ARMS}
        comparison = compare(out, arms)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    dataset = cfg.data.dataset
    path = Path(args.results) if args.results else RESULTS / f"positions_{dataset}.json"
    pipeline = run / "student"
    atomic_write_json(
        path,
        {
            "dataset": dataset,
            "run": str(run),
            "overrides": overrides,
            "command": " ".join(["python benchmarks/positions.py", *sys.argv[1:]]),
            "seed": cfg.seed,
            "student": {k: getattr(cfg.student, k) for k in ("epochs", "init", "loss", "budget")},
            "device": str(device),
            "machine": machine_description(),
            # Trained in this order, in one process: the first arm's seconds also hold
            # one-off start-up costs (the later arms find warm caches).
            "arms": arms,
            "none_minus_absolute": comparison,
            "pipeline_student_ndcg10": (
                read_metrics(pipeline)["test"]["full"][METRIC] if finished(pipeline) else None
            ),
        },
    )
    print(f"wrote {path}")
    for arm, a in arms.items():
        print(
            f"{arm:>8}: NDCG@10 {a['test_full_ndcg10']:.4f} +- {a['test_full_ndcg10_se']:.4f}"
            f"  ({a['train_seconds']:.0f} s)"
        )
    print(
        f"none - absolute: {comparison['difference']:+.4f} +- {comparison['difference_se']:.4f}"
        f" ({'paired' if comparison['paired'] else 'unpaired'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
