"""Train every teacher (and pop) on ml-100k, pop and SASRec on ml-1m; write teachers.json.

Usage: python benchmarks/teachers.py [--out runs/bench-teachers] [--only ml-100k:sasrec ...]
Each entry reuses a finished run directory, so the script can be interrupted and rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adarec.config import load_config
from adarec.evaluate.latency import machine_description
from adarec.io import atomic_write_json
from adarec.pipeline.teacher import train_teacher
from adarec.runs import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = [
    ("ml-100k", "pop", "configs/quick.yaml", []),
    ("ml-100k", "nextitnet", "configs/ml-100k.yaml", []),  # the main job's teacher
    ("ml-100k", "sasrec", "configs/quick.yaml", []),
    ("ml-100k", "bert4rec", "configs/quick.yaml", []),
    ("ml-1m", "pop", "configs/ml-1m.yaml", []),
    ("ml-1m", "sasrec", "configs/ml-1m.yaml", []),  # the ml-1m pipeline's teacher
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench-teachers")
    parser.add_argument("--only", nargs="*", help="entries as DATASET:MODEL")
    parser.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        metavar="DATASET:MODEL=RUN_DIR",
        help="take an entry from a finished run (e.g. an `adarec run` teacher)",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    reuse = dict(item.split("=", 1) for item in args.reuse)
    results_path = ROOT / "benchmarks" / "results" / "teachers.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": {}}
    for dataset, model, preset, extra in ENTRIES:
        key = f"{dataset}:{model}"
        if args.only and key not in args.only:
            continue
        run_dir = Path(reuse.get(key) or Path(args.out) / dataset / model)
        if (run_dir / "metrics.json").exists():
            metrics = read_metrics(run_dir)
        else:
            cfg = load_config(
                ROOT / preset, [f"data.dataset={dataset}", f"model.name={model}", *extra]
            )
            metrics = train_teacher(cfg, run_dir, quiet=args.quiet, resume=True)
        results["runs"][key] = {
            "preset": preset,
            "test_full": {k: metrics["test"]["full"][k] for k in ("NDCG@10", "HR@10", "MRR@10")},
            "test_sampled": {k: metrics["test"]["sampled"][k] for k in ("NDCG@10", "HR@10")},
            "valid_full_ndcg10": metrics["valid"]["full"]["NDCG@10"],
            # RecBole-style full ranking without the user's own items, where measured
            # (`adarec evaluate RUN_DIR --exclude-seen` writes evaluation.json).
            "test_full_exclude_seen": excluding_seen(run_dir),
            "params": metrics["params"],
            "train_seconds": metrics["train_seconds"],
            "epochs": metrics["epochs"],
        }
        results["machine"] = machine_description()
        results["command"] = "python benchmarks/teachers.py"
        atomic_write_json(results_path, results)
    print(markdown_table(results))
    return 0


def excluding_seen(run_dir: Path) -> dict[str, float] | None:
    path = run_dir / "evaluation.json"
    if not path.exists():
        return None
    evaluation = json.loads(path.read_text())
    if not evaluation.get("exclude_seen"):
        return None
    return {k: evaluation["test"]["full"][k] for k in ("NDCG@10", "HR@10")}


def markdown_table(results: dict) -> str:
    lines = [
        "| dataset | model | NDCG@10 | HR@10 | sampled NDCG@10 | sampled HR@10 "
        "| NDCG@10 / HR@10 excl. seen | body params | train time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results["runs"].items():
        dataset, model = key.split(":")
        excl = r.get("test_full_exclude_seen")
        seen = f"{excl['NDCG@10']:.4f} / {excl['HR@10']:.4f}" if excl else "-"
        lines.append(
            f"| {dataset} | {model} | {r['test_full']['NDCG@10']:.4f} | "
            f"{r['test_full']['HR@10']:.4f} | {r['test_sampled']['NDCG@10']:.4f} | "
            f"{r['test_sampled']['HR@10']:.4f} | {seen} | {r['params']['body']:,} | "
            f"{r['train_seconds']:.0f} s ({r['epochs']} epochs) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
