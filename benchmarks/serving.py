"""Size, MACs and latency of trained runs under every serving backend (``adarec bench``).

Usage:
    python benchmarks/serving.py TEACHER_RUN STUDENT_RUN [RUN ...] [--threads 1]
        [--batch-sizes 1,32,256] [--repeats 30] [--out benchmarks/results/serving.json]

All runs are timed in one process with the same threads and inputs; speed-ups are over the
first run. The result is merged into the output JSON under the key DATASET.bench.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adarec.errors import UserError
from adarec.serve.bench import bench_runs, format_bench_table, merge_results

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "serving.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="finished runs of one dataset; first = base")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="1,32,256")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    except ValueError:
        print(
            f"--batch-sizes: expected integers like 1,32,256; got {args.batch_sizes!r}",
            file=sys.stderr,
        )
        return 2
    try:
        result = bench_runs(
            [Path(r) for r in args.run_dirs],
            args.threads,
            batch_sizes,
            args.repeats,
            args.warmup,
            device=args.device,
        )
        dataset = result["runs"][0]["dataset"]
        merge_results(args.out, (dataset, "bench"), result)
    except UserError as exc:
        print(f"serving benchmark: error: {exc}", file=sys.stderr)
        return 2
    print(format_bench_table(result))
    print(f"merged into {args.out} (key {dataset}.bench)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
