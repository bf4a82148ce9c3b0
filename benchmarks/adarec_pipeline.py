"""The whole AdaRec pipeline on a dataset, with the method's targets checked.

Usage: python benchmarks/adarec_pipeline.py --dataset ml-100k [--config configs/ml-100k.yaml]
       [--out runs/bench-adarec-ml-100k] [--set key=value ...] [--ablate]
Writes benchmarks/results/adarec_DATASET.json: accuracy, body parameters, MACs and CPU
latency of teacher, student and baselines, the speed-ups and whether each target was met.
Finished stages are reused, so the script can be interrupted and rerun.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adarec.config import load_config
from adarec.io import atomic_write_json, read_json
from adarec.pipeline.evaluate import excluded_seen_test
from adarec.pipeline.run import BASELINES, run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--config", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--ablate", action="store_true", help="every baseline and ablation")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--summarise-only",
        action="store_true",
        help="summarise OUT/report.json of a finished run without measuring",
    )
    args = parser.parse_args()
    config = args.config or ROOT / "configs" / f"{args.dataset}.yaml"
    cfg = load_config(config, [f"data.dataset={args.dataset}", *args.overrides])
    out = Path(args.out or f"runs/bench-adarec-{args.dataset}")
    if args.summarise_only:
        report = read_json(out / "report.json")
    else:
        report = run_pipeline(
            cfg, out, baselines=list(BASELINES) if args.ablate else None, quiet=args.quiet
        )
    # Beside the headline: the same test with each user's history items not ranked.
    unseen = {
        name: excluded_seen_test(out / name)["full"]["NDCG@10"] for name in ("teacher", "student")
    }
    summary = {
        "dataset": args.dataset,
        "config": str(config),
        "overrides": args.overrides,
        "command": " ".join(["python benchmarks/adarec_pipeline.py", *sys.argv[1:]]),
        "machine": report["machine"],
        "threads": report["threads"],
        "targets": report["targets"],
        "excluded_seen_ndcg10": {
            **unseen,
            "ratio": round(unseen["student"] / unseen["teacher"], 4),
        },
        "speedup": report["speedup"],
        "latency_ms": report["latency_ms"],
        "speedup_by_backend": report["speedup_by_backend"],
        "latency_ms_by_backend": report["latency_ms_by_backend"],
        "seconds": report["seconds"],
        "search": report["search"],
        "architecture": report["student"]["architecture"],
        "models": {
            name: {
                "test_full": m["test"]["full"],
                "test_sampled": m["test"]["sampled"],
                "params": m["params"],
                "macs": m["macs"],
            }
            for name, m in [
                ("teacher", report["teacher"]),
                ("student", report["student"]),
                *report["baselines"].items(),
            ]
        },
    }
    path = ROOT / "benchmarks" / "results" / f"adarec_{args.dataset}.json"
    atomic_write_json(path, summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
