"""A student served from shared windows against the same student served edge by edge.

Usage:
    python benchmarks/serving_paths.py TEACHER_RUN STUDENT_RUN [--threads 2]
        [--batch-sizes 1,256] [--repeats 300] [--torchscript LABEL=FILE ...]
        [--out benchmarks/results/serving_paths_DATASET.json]

A student cell serves its causal convolutions and pools from one padded windows view per
state, each convolution as a product of its taps and weight (``StudentCell``); training
and ONNX export run each edge's own forward (conv1d, a pad and transposes per edge). This
times both ways of serving the same weights, and the teacher beside them, in one process,
on the run's real test histories, interleaved call by call, eager and frozen TorchScript
(traced as ``adarec export`` traces). It also counts the frozen graphs' ops and checks
that both ways score the same. ``--torchscript`` adds frozen exports of the same student
made by other code (an older commit's ``adarec export``), timed in the same interleaving.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarec.errors import UserError
from adarec.evaluate.latency import latency_inputs, machine_description, measure_latency
from adarec.io import atomic_write_json
from adarec.nas.student import Student
from adarec.runs import load_run_config, load_run_model
from adarec.serve.export import ScorePredict, example_histories, frozen_torchscript
from adarec.serve.measure import ScorerModule, run_histories
from adarec.serve.predictor import load_torchscript

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", type=Path, help="the teacher's run directory")
    parser.add_argument("student", type=Path, help="a finished student run of the same data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,256")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--torchscript",
        action="append",
        default=[],
        metavar="LABEL=FILE",
        help="also time a frozen TorchScript export of the student, e.g. one that an "
        "older commit's `adarec export` wrote (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def frozen(model: nn.Module) -> torch.jit.ScriptModule:
    """``full_sort_predict`` traced and frozen, as ``adarec export`` writes TorchScript."""
    example = example_histories(model.num_items, model.max_len)
    return frozen_torchscript(ScorePredict(model).eval(), example)


def graph_ops(module: torch.jit.ScriptModule) -> dict[str, int]:
    """{op kind: count} of a frozen graph, constants and list building left out."""
    kinds = Counter(node.kind() for node in module.graph.nodes())
    for kind in ("prim::Constant", "prim::ListConstruct"):
        kinds.pop(kind, None)
    return dict(kinds.most_common())


def serving_paths(args: argparse.Namespace, batch_sizes: list[int]) -> dict[str, Any]:
    teacher, _ = load_run_model(args.teacher)
    windows, spec = load_run_model(args.student)
    if not isinstance(windows, Student):
        raise UserError(f"{args.student} holds a {spec['kind']}, not a student")
    per_edge = copy.deepcopy(windows)
    for cell in per_edge.cells:
        cell.serve_from_windows = False
    eager = {"teacher": teacher, "student (windows)": windows, "student (per edge)": per_edge}
    scripted = {name: frozen(model) for name, model in eager.items()}
    for option in args.torchscript:
        label, sep, file = option.partition("=")
        if not sep or not label or "/" in label or label in scripted or not Path(file).is_file():
            raise UserError(f"--torchscript {option!r}: expected a new LABEL=FILE of a file")
        scripted[label] = load_torchscript(Path(file), torch.device("cpu"))
    histories = run_histories(args.student, spec["max_len"], spec["num_items"])
    inputs = latency_inputs(histories, batch_sizes)
    with torch.no_grad():
        sample = inputs[max(batch_sizes)][:64]
        reference = per_edge.full_sort_predict(sample)
        differences = {
            name: round(float((module(sample) - reference).abs().max()), 7)
            for name, module in scripted.items()
            if name != "teacher"
        }
    timed: dict[str, nn.Module] = {f"{name}/eager": model for name, model in eager.items()}
    timed |= {f"{name}/torchscript": ScorerModule(m) for name, m in scripted.items()}
    latency = measure_latency(timed, inputs, args.repeats, args.warmup, args.threads)
    medians = {label: {b: v["median_ms"] for b, v in per.items()} for label, per in latency.items()}
    speedups = {
        label: {
            b: round(medians[f"teacher/{label.split('/')[1]}"][b] / ms, 3) for b, ms in per.items()
        }
        for label, per in medians.items()
        if not label.startswith("teacher/")
    }
    return {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "machine": machine_description(),
        "threads": args.threads,
        "repeats": args.repeats,
        "dataset": load_run_config(args.student).data.dataset,
        "teacher": str(args.teacher),
        "student": str(args.student),
        "genotype": spec["genotype"],
        # Against the eager per-edge forward, on 64 real histories.
        "max_abs_score_difference": differences,
        "latency_ms": medians,
        "latency_p95_ms": {
            label: {b: v["p95_ms"] for b, v in per.items()} for label, per in latency.items()
        },
        "speedup_over_teacher": speedups,
        "frozen_graph_ops": {name: graph_ops(module) for name, module in scripted.items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        print(
            f"--batch-sizes: expected integers like 1,256; got {args.batch_sizes!r}",
            file=sys.stderr,
        )
        return 2
    try:
        result = serving_paths(args, batch_sizes)
    except UserError as exc:
        print(f"serving paths: error: {exc}", file=sys.stderr)
        return 2
    out = args.out or RESULTS / f"serving_paths_{result['dataset']}.json"
    atomic_write_json(out, result)
    for label, per in result["latency_ms"].items():
        ratios = result["speedup_over_teacher"].get(label, {})
        cells = "  ".join(
            f"batch {b}: {ms:.3f} ms ({ratios.get(b, 1.0)}x)" for b, ms in per.items()
        )
        print(f"{label:32s} {cells}")
    total = {name: sum(ops.values()) for name, ops in result["frozen_graph_ops"].items()}
    print(f"frozen graph ops: {total}; max score difference {result['max_abs_score_difference']}")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
