"""One event, every serving path: the compiled step against the floor and the teacher's best.

Usage:
    python benchmarks/per_event.py TEACHER_RUN STUDENT_RUN [--users 40] [--max-events 150]
        [--threads 1] [--seed 0] [--out benchmarks/results/per_event_DATASET.json]

In one process, one thread, the real event streams of ``--users`` users of the runs'
dataset (those with the longest histories, so that events past ``max_len`` are measured)
are replayed from their first event. For every user, in a fresh seeded random order of
the paths, each path serves the user's whole stream, event after event (as a server serving
that model would: its weights stay in cache), from the new item to the top-10 ids:

  student compiled step        ``CompiledStudentStreamer.advance_top_k``: one compiled call
  student torch step           ``StudentStreamer.advance`` + the exact top-k (PyTorch)
  student compiled history     ``CompiledStep.rank`` of the served window (``/recommend``
                               at batch 1: one compiled call over the receptive field)
  student TorchScript forward  the frozen TorchScript graph of ``full_sort_predict``
  teacher TorchScript forward  the same for the teacher (it recomputes the window)
  teacher torch step           the teacher's own incremental step, where it has one
  floor                        the student's head matvec + top-10 alone, compiled

The event's fp32 floor is its multiply-adds (the student's per-event MACs) at the rate of
the faster compiled [num_items + 1, width] matvec (BLAS sgemv, or the step's own head
routine) timed in the same process, in the same blocks as the paths (on the compiled
step's hidden states). Every compiled answer is
checked against ``full_sort_predict`` of the served window (same top-10, max abs score
difference). The teacher's best path is the faster of its TorchScript forward and its
step (p50). Test NDCG@10 of the student is computed served compiled and eager (full ranking,
the same test users): the served student must score the same.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from adarec.data.preprocess import prepare
from adarec.data.splits import eval_split, left_pad
from adarec.errors import UserError
from adarec.evaluate.evaluator import evaluate
from adarec.evaluate.latency import machine_description
from adarec.io import atomic_write_json
from adarec.nas.compiled_step import CompiledStep, head_scores, top_k
from adarec.runs import load_run_config, load_run_model
from adarec.serve.catalogue import ExactCatalogue
from adarec.serve.export import ScorePredict, example_histories, frozen_torchscript
from adarec.serve.measure import ScorerModule
from adarec.serve.streaming import CompiledStudentStreamer, streamer_for

RESULTS = Path(__file__).resolve().parent / "results"
K = 10


@numba.njit(cache=True, fastmath={"reassoc", "contract", "nsz"}, nogil=True)
def _head_top_k(weight_t, bias, hidden, k, ids, top):  # pragma: no cover - compiled
    """The floor's work: the head's scores (the compiled step's own ``head_scores``), then
    the top-k (padding out)."""
    scores = np.empty(weight_t.shape[1], np.float32)
    head_scores(weight_t, bias, hidden, scores)
    top_k(scores, k, ids, top)
    return ids


@numba.njit(cache=True, nogil=True)
def _blas_matvec(weight, hidden, out):  # pragma: no cover - compiled
    np.dot(weight, hidden, out)


@numba.njit(cache=True, fastmath={"reassoc", "contract", "nsz"}, nogil=True)
def _matvec(weight_t, hidden, out):  # pragma: no cover - compiled
    """The head's matvec alone, without its bias: the compiled step's own routine."""
    head_scores(weight_t, np.zeros(weight_t.shape[1], np.float32), hidden, out)


def summary(ns: list[int]) -> dict[str, float | int]:
    us = np.asarray(ns, dtype=np.float64) / 1e3
    return {
        "p50_us": round(float(np.percentile(us, 50)), 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
        "mean_us": round(float(us.mean()), 2),
        "count": len(ns),
    }


def event_arithmetic(step: CompiledStep) -> dict[str, int]:
    """Multiply-adds, bytes of weights and bytes of state of one compiled event."""
    program = step.program
    return {
        "macs": program.macs_per_event,
        "weight_bytes": program.bytes_per_event,
        "state_bytes": 4 * program.state_rows * program.width,
    }


def streams_of(run_dir: Path, users: int, max_events: int) -> tuple[list[np.ndarray], Any]:
    """The ``users`` longest item sequences (internal ids, capped at ``max_events``)."""
    cfg = load_run_config(run_dir)
    data = prepare(cfg.data, cfg.seed)
    order = sorted(range(len(data.sequences)), key=lambda u: -len(data.sequences[u]))
    return [data.sequences[u][:max_events] for u in sorted(order[:users])], (cfg, data)


class Event:
    """What every path of one event reads and writes (the paths run in a random order)."""

    def __init__(self, history: list[int], item: int, max_len: int):
        self.history = history
        self.item = item
        self.window = torch.from_numpy(left_pad([np.asarray(history[-max_len:])], max_len))
        self.answers: dict[str, Any] = {}


def replay(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    streams: list[np.ndarray],
    seed: int,
) -> dict[str, Any]:
    max_len = student.max_len
    step = CompiledStep(student)
    compiled = CompiledStudentStreamer(student, step)
    reference = streamer_for(student, "torch")
    student_catalogue = ExactCatalogue(student)
    example = example_histories(student.num_items, max_len)
    student_ts = frozen_torchscript(ScorePredict(student).eval(), example)
    teacher_ts = frozen_torchscript(ScorePredict(teacher).eval(), example)
    try:
        teacher_streamer = streamer_for(teacher)
        teacher_catalogue = ExactCatalogue(teacher)
    except UserError:
        teacher_streamer = None
    head_w = student.output_layer.weight.detach().float().contiguous().numpy()
    head_t = np.ascontiguousarray(head_w.T)
    head_b = student.output_layer.bias.detach().float().contiguous().numpy()
    ids, top = np.empty(K, np.int64), np.empty(K, np.float32)
    states: dict[str, Any] = {}

    def top_k(scores: torch.Tensor) -> list[int]:
        scores = scores[0].clone()
        scores[0] = float("-inf")
        return torch.topk(scores, K).indices.tolist()

    def compiled_step(event: Event) -> None:
        state, event.answers["compiled"], event.answers["compiled_scores"] = compiled.advance_top_k(
            states["compiled"], event.item, K
        )
        states["compiled"] = state

    def torch_step(event: Event) -> None:
        states["torch"] = reference.advance(states["torch"], event.item)
        student_catalogue.top_k(states["torch"].output, K)

    def compiled_history(event: Event) -> None:
        event.answers["history"] = step.rank(event.history[-max_len:], K)[0]

    def student_forward(event: Event) -> None:
        top_k(student_ts(event.window))

    def teacher_forward(event: Event) -> None:
        top_k(teacher_ts(event.window))

    def teacher_step(event: Event) -> None:
        states["teacher"] = teacher_streamer.advance(states["teacher"], event.item)
        teacher_catalogue.top_k(states["teacher"].output, K)

    def floor(event: Event) -> None:
        _head_top_k(head_t, head_b, states["compiled"].output.numpy(), K, ids, top)

    matvec_out = np.empty(head_w.shape[0], np.float32)

    def matvec(event: Event) -> None:
        _matvec(head_t, states["compiled"].output.numpy(), matvec_out)

    def blas_matvec(event: Event) -> None:
        _blas_matvec(head_w, states["compiled"].output.numpy(), matvec_out)

    times: dict[str, list[int]] = {}
    rng = random.Random(seed)
    worst, mismatches, set_mismatches, events = 0.0, 0, 0, 0
    clock = time.perf_counter_ns
    paths = {
        "student_compiled_step": compiled_step,
        "student_torch_step": torch_step,
        "student_compiled_history": compiled_history,
        "student_torchscript_forward": student_forward,
        "teacher_torchscript_forward": teacher_forward,
    }
    if teacher_streamer is not None:
        paths["teacher_torch_step"] = teacher_step
    with torch.inference_mode():
        for stream in streams:
            items = stream.tolist()
            stream_events = [Event(items[: t + 1], item, max_len) for t, item in enumerate(items)]
            states["compiled"], states["torch"] = compiled.init_state(), reference.init_state()
            if teacher_streamer is not None:
                states["teacher"] = teacher_streamer.init_state()
            order = list(paths)
            rng.shuffle(order)
            # The floors score the compiled step's new hidden state: each event's compiled
            # step, then the head + top-k alone and the head's matvec alone (timed).
            order.insert(order.index("student_compiled_step") + 1, "floor")
            for name in order:
                if name == "floor":
                    states["compiled"] = compiled.init_state()
                    for event in stream_events:
                        compiled_step(event)
                        floors = (
                            ("floor_head_topk", floor),
                            ("head_matvec", matvec),
                            ("head_matvec_blas", blas_matvec),
                        )
                        for label, work in floors:
                            start = clock()
                            work(event)
                            times.setdefault(label, []).append(clock() - start)
                    continue
                # Each path serves the user's whole stream, event after event, as a server
                # serving this model would (its weights stay in cache between events).
                for event in stream_events:
                    phase = "within" if len(event.history) <= max_len else "past"
                    start = clock()
                    paths[name](event)
                    elapsed = clock() - start
                    times.setdefault(name, []).append(elapsed)
                    if name.endswith("_step"):
                        times.setdefault(f"{name}_{phase}", []).append(elapsed)
            for event in stream_events:
                expected = student.full_sort_predict(event.window)[0]
                expected[0] = float("-inf")
                values, indices = torch.topk(expected, K)
                answers = event.answers
                expected_ids = indices.tolist()
                if answers["compiled"] != expected_ids or answers["history"] != expected_ids:
                    mismatches += 1
                    # The same items in another order: scores that tie within float32
                    # rounding (sums taken in another order) may swap.
                    same = set(answers["compiled"]) == set(expected_ids) == set(answers["history"])
                    set_mismatches += not same
                diff = np.abs(np.asarray(answers["compiled_scores"]) - values.numpy()).max()
                worst = max(worst, float(diff))
                events += 1
    latency = {name: summary(ns) for name, ns in sorted(times.items())}
    return {
        "events": events,
        "events_past_max_len": len(times.get("student_compiled_step_past", [])),
        "reencodes_compiled": compiled.reencodes,
        "top10_mismatches": mismatches,
        "top10_set_mismatches": set_mismatches,
        "max_abs_score_diff": worst,
        "latency": latency,
        "arithmetic": event_arithmetic(step),
        "step": step,
    }


def matvec_us(student: torch.nn.Module, repeats: int = 3000) -> float:
    """p50 of the faster compiled head matvec (BLAS on [rows, C] or the step's own on
    [C, rows]) in a tight loop: the rate at the machine's best moment."""
    weight = student.output_layer.weight.detach().float().contiguous().numpy()
    weight_t = np.ascontiguousarray(weight.T)
    hidden = np.random.default_rng(0).random(weight.shape[1]).astype(np.float32)
    out = np.empty(weight.shape[0], np.float32)
    best = float("inf")
    for fn, matrix in ((_blas_matvec, weight), (_matvec, weight_t)):
        fn(matrix, hidden, out)
        ns = []
        for _ in range(repeats):
            start = time.perf_counter_ns()
            fn(matrix, hidden, out)
            ns.append(time.perf_counter_ns() - start)
        best = min(best, float(np.percentile(ns, 50)) / 1e3)
    return best


def accuracy(student: torch.nn.Module, step: CompiledStep, cfg: Any, data: Any) -> dict[str, Any]:
    """Test NDCG@10 (full ranking) of the student served eager and served compiled."""
    split = eval_split(data, "test", student.max_len)
    eager = evaluate(student, split, [10], cfg.eval.batch_size, "cpu")
    served = evaluate(ScorerModule(step.scores), split, [10], cfg.eval.batch_size, "cpu")
    return {
        "test_users": eager["num_users"],
        "eager_ndcg10": eager["full"]["NDCG@10"],
        "compiled_ndcg10": served["full"]["NDCG@10"],
        "same_to_4_digits": round(eager["full"]["NDCG@10"], 4)
        == round(served["full"]["NDCG@10"], 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", type=Path)
    parser.add_argument("student", type=Path)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--max-events", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    teacher, _ = load_run_model(args.teacher, torch.device("cpu"))
    student, spec = load_run_model(args.student, torch.device("cpu"))
    streams, (cfg, data) = streams_of(args.student, args.users, args.max_events)
    result = replay(teacher.eval(), student.eval(), streams, args.seed)
    step = result.pop("step")
    lat = result["latency"]
    # The single-core matvec rate, measured in the same blocks as the paths (a tight loop
    # alone is also reported: it runs at the machine's best moment, not the paths').
    matvec = min(lat["head_matvec"]["p50_us"], lat["head_matvec_blas"]["p50_us"])
    arithmetic = result["arithmetic"]
    rows, width = student.num_items + 1, student.width
    fp32_floor = arithmetic["macs"] / (rows * width / matvec)
    compiled = lat["student_compiled_step"]["p50_us"]
    teacher_paths = {
        name: lat[name]["p50_us"]
        for name in ("teacher_torchscript_forward", "teacher_torch_step")
        if name in lat
    }
    teacher_best = min(teacher_paths, key=teacher_paths.get)

    def best_over_step(phase: str) -> dict[str, Any] | None:
        """The teacher's faster path for events of one phase, over the compiled step's."""
        student_phase = lat.get(f"student_compiled_step_{phase}")
        if student_phase is None:
            return None
        paths = {"teacher_torchscript_forward": teacher_paths["teacher_torchscript_forward"]}
        if f"teacher_torch_step_{phase}" in lat:
            paths["teacher_torch_step"] = lat[f"teacher_torch_step_{phase}"]["p50_us"]
        best = min(paths, key=paths.get)
        return {"path": best, "ratio": round(paths[best] / student_phase["p50_us"], 2)}

    within = lat["student_compiled_step_within"]["p50_us"]
    past = lat.get("student_compiled_step_past", {}).get("p50_us")
    ratios = {
        "compiled_step_over_fp32_floor": round(compiled / fp32_floor, 3),
        "teacher_best_path": teacher_best,
        "teacher_best_over_compiled_step": round(teacher_paths[teacher_best] / compiled, 2),
        "teacher_best_over_compiled_history": round(
            teacher_paths[teacher_best] / lat["student_compiled_history"]["p50_us"], 2
        ),
        "teacher_best_over_compiled_step_within_max_len": best_over_step("within"),
        "teacher_best_over_compiled_step_past_max_len": best_over_step("past"),
        "torch_step_over_compiled_step": round(lat["student_torch_step"]["p50_us"] / compiled, 2),
        "past_over_within_max_len": round(past / within, 3) if past else None,
    }
    out = {
        "dataset": cfg.data.dataset,
        "teacher_run": str(args.teacher),
        "student_run": str(args.student),
        "teacher": type(teacher).__name__,
        "student_genotype": spec.get("genotype"),
        "student_positions": getattr(student, "positions", "absolute"),
        "num_items": student.num_items,
        "max_len": student.max_len,
        "users": len(streams),
        "threads": args.threads,
        "machine": machine_description(),
        "torch_version": torch.__version__,
        "numba_version": numba.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python benchmarks/per_event.py", *sys.argv[1:]]),
        "matvec_us": round(matvec, 2),
        "matvec_tight_loop_us": round(matvec_us(student), 2),
        "fp32_floor_us": round(fp32_floor, 2),
        **result,
        "ratios": ratios,
        "accuracy": accuracy(student, step, cfg, data),
    }
    path = args.out or RESULTS / f"per_event_{cfg.data.dataset}.json"
    atomic_write_json(path, out)
    print(json.dumps({k: out[k] for k in ("matvec_us", "fp32_floor_us", "ratios", "accuracy")}))
    for name, stats in lat.items():
        print(f"{name:<36}{stats['p50_us']:>10.1f}{stats['p99_us']:>10.1f}  ({stats['count']})")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
