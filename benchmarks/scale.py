"""How adarec scales with the catalogue (issue 28): data preparation and training steps.

Usage: python benchmarks/scale.py --part train [--sizes 3416,50000,250000,1000000]
       [--stages teacher,student,kd] [--steps 3] [--negatives 1024] [--max-logits-gb 8]
       python benchmarks/scale.py --part prep [--rows 1M,10M,50M,retailrocket]
       [--reference-rows 1M,10M] [--work DIR] [--threads 2]   (see benchmarks/scale_prep.py)
       python benchmarks/scale.py --part run [--work DIR] [--config configs/retailrocket.yaml]
       [--budget-hours 6]

``--part train`` times training steps of ml-1m's settings (configs/ml-1m.yaml: the SASRec
teacher, hidden 128; a student of two cells of width 96; batch 256 windows of 50
positions) on catalogues of each size, with the full softmax and with the sampled one
(``sampled_softmax.negatives`` shared negatives, popularity proposal, log-Q correction).
Each (stage, softmax, size) runs in its own process, so that its peak resident memory
(ru_maxrss, which includes the ~0.3 GB of Python and torch) is its own; one warm-up step,
then the median (and the fastest) of ``--steps`` timed steps on random windows. A
full-softmax arm whose [positions, N] tensors (logits, log-softmax, gradient; twice for
kd, whose teacher scores the catalogue too) would exceed ``--max-logits-gb`` is not run
and says so. One thread
(OMP_NUM_THREADS=1). Writes the "train" key of benchmarks/results/scale.json (read, then
replaced atomically under a lock, so ``--part prep`` keeps its key); a run of some
``--stages`` replaces those stages' rows and keeps the others'.

``--part run`` is one end-to-end ``adarec run`` (data preparation, teacher, search, front,
student, report) on the RetailRocket-sized log of ``--part prep`` (generated under
``--work`` when missing), with configs/retailrocket.yaml, from scratch: a new run
directory and a new data cache under ``--work``. Wall and CPU seconds and peak resident
memory are those of the ``adarec run`` process (``getrusage`` of the child); the run's
report.json gives the stages' seconds, the teacher's and the student's test NDCG@10 and
the speed-ups. Writes the "run" key of benchmarks/results/scale.json, with whether it
finished within ``--budget-hours``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adarec.config import SampledSoftmaxConfig, load_config
from adarec.evaluate.latency import machine_description
from adarec.io import atomic_write_json
from adarec.models.sasrec import SASRec
from adarec.nas.genotype import random_genotype
from adarec.nas.student import Student
from adarec.train.distill_stage import DistillStage
from adarec.train.sampled import make_sampler
from adarec.train.supervised import SupervisedStage

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
CONFIG = ROOT / "configs" / "ml-1m.yaml"
STAGES = ("teacher", "student", "kd")
ARMS = ("full", "sampled")


def prep(args: argparse.Namespace) -> int:
    """Data preparation at 1M to 50M interactions: benchmarks/scale_prep.py."""
    sys.path.insert(0, str(Path(__file__).parent))
    import scale_prep

    return scale_prep.run(args, RESULTS)


def _logits_gb(stage: str, positions: int, num_items: int) -> float:
    """The full softmax's [positions, N] float32 tensors of one step, in GB."""
    tensors = 3 + (2 if stage == "kd" else 0)  # kd: the teacher's logits and softmax too
    return tensors * positions * num_items * 4 / 1e9


def _build(stage: str, num_items: int, sampled: bool, negatives: int, seed: int):
    """The stage of ml-1m's settings on a catalogue of ``num_items``."""
    cfg = load_config(CONFIG)
    torch.manual_seed(seed)
    counts = np.random.default_rng(seed).zipf(1.5, num_items + 1).clip(max=10**6)
    ss = SampledSoftmaxConfig(min_items=0 if sampled else 10**12, negatives=negatives)
    sampler = make_sampler(ss, counts)
    max_len, m = cfg.data.max_len, cfg.model
    device = torch.device("cpu")

    def teacher() -> SASRec:
        return SASRec(
            num_items, max_len, m.hidden_size, m.num_blocks, m.num_heads, m.inner_size, m.dropout
        )

    def student() -> Student:
        s = cfg.search
        genotype = random_genotype(s.ops, s.nodes, s.cells, s.width, seed)
        return Student(num_items, max_len, genotype, s.dropout, positions=cfg.student.positions)

    if stage == "teacher":
        return SupervisedStage(teacher(), cfg.train, device, sampler=sampler), cfg.train
    if stage == "student":
        return SupervisedStage(student(), cfg.student, device, sampler=sampler), cfg.student
    kd = DistillStage(student(), teacher(), cfg.distill, cfg.student, device, seed, sampler=sampler)
    return kd, cfg.student


def _one(stage: str, arm: str, num_items: int, steps: int, negatives: int) -> dict[str, Any]:
    """Time one (stage, arm, size) in this process: seconds per step and peak memory."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    train_stage, loop = _build(stage, num_items, arm == "sampled", negatives, seed=0)
    build_seconds = time.perf_counter() - started
    generator = torch.Generator().manual_seed(0)
    max_len = train_stage.model.max_len
    train_stage.on_epoch_start(0)
    seconds, losses = [], []
    for step in range(steps + 1):
        window = torch.randint(
            1, num_items + 1, (loop.batch_size, max_len + 1), generator=generator
        )
        start = time.perf_counter()
        values = train_stage.train_step(window, 0, step)
        if step > 0:  # the first step warms up
            seconds.append(time.perf_counter() - start)
        losses.append(values["loss"])
    return {
        "seconds_per_step": round(statistics.median(seconds), 4),
        # The fastest step: the least disturbed by other work on a shared machine.
        "seconds_min": round(min(seconds), 4),
        "steps": len(seconds),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3),
        "build_seconds": round(build_seconds, 2),
        "last_loss": round(losses[-1], 4),
    }


def _ratios(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The target of issue 28 (a step at the largest catalogue within 3x the smallest's):
    each stage's sampled step at the largest size over the smallest size's sampled step
    and its full-softmax one (the default there)."""
    timed = {
        (r["stage"], r["softmax"], r["num_items"]): r["seconds_per_step"]
        for r in runs
        if "seconds_per_step" in r
    }
    ratios = {}
    for stage in dict.fromkeys(r["stage"] for r in runs):
        sizes = [r["num_items"] for r in runs if r["stage"] == stage]
        largest = timed.get((stage, "sampled", max(sizes)))
        ratios[stage] = {
            f"over_{arm}": round(largest / timed[(stage, arm, min(sizes))], 2)
            for arm in ARMS
            if largest is not None and (stage, arm, min(sizes)) in timed
        }
    return ratios


def _write_train(runs: list[dict[str, Any]], command: str, record: dict[str, Any]) -> None:
    """Replace the rows of the stages in ``runs`` in the "train" key of scale.json, keeping
    the other stages' rows and the other keys (read-modify-write under the lock that
    ``--part prep`` takes too; the write itself is atomic)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    stages = {r["stage"] for r in runs}
    with open(RESULTS.with_suffix(".json.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        content = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        earlier = content.get("train", {})
        merged = [r for r in earlier.get("runs", []) if r["stage"] not in stages] + runs
        # Which command measured each stage (a record of one command says it once).
        commands = earlier.get("commands") or {
            r["stage"]: earlier.get("command") for r in earlier.get("runs", [])
        }
        commands = {**commands, **{stage: command for stage in stages}}
        commands = {stage: commands[stage] for stage in dict.fromkeys(r["stage"] for r in merged)}
        content["train"] = {
            **record,
            "runs": merged,
            "sampled_largest_over_smallest": _ratios(merged),
            "commands": commands,
        }
        atomic_write_json(RESULTS, content)


def train(args: argparse.Namespace) -> int:
    if args.one:
        stage, arm, size = args.one.split(":")
        print(json.dumps(_one(stage, arm, int(size), args.steps, args.negatives)))
        return 0
    cfg = load_config(CONFIG)
    positions = cfg.train.batch_size * cfg.data.max_len
    sizes = [int(s) for s in args.sizes.split(",")]
    stages = args.stages.split(",")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs: list[dict[str, Any]] = []
    for stage in stages:
        for arm in ARMS:
            for size in sizes:
                row: dict[str, Any] = {"stage": stage, "softmax": arm, "num_items": size}
                gb = _logits_gb(stage, positions, size)
                if arm == "full" and gb > args.max_logits_gb:
                    row["skipped"] = (
                        f"the full softmax's [{positions}, {size}] tensors need ~{gb:.0f} GB "
                        f"(> --max-logits-gb {args.max_logits_gb:g})"
                    )
                else:
                    command = [
                        sys.executable,
                        __file__,
                        "--part",
                        "train",
                        "--one",
                        f"{stage}:{arm}:{size}",
                        "--steps",
                        str(args.steps),
                        "--negatives",
                        str(args.negatives),
                    ]
                    done = subprocess.run(command, env=env, capture_output=True, text=True)
                    if done.returncode != 0:
                        row["failed"] = done.stderr.strip().splitlines()[-1:]
                    else:
                        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(row), flush=True)
                runs.append(row)
    _write_train(
        runs,
        " ".join(["python benchmarks/scale.py", *sys.argv[1:]]),
        {
            "positions_per_step": positions,
            "negatives": args.negatives,
            "settings": "configs/ml-1m.yaml (teacher SASRec 128 x 2 blocks; student: a "
            "random cell of the search space, 2 cells x 96; batch 256 x 50 positions)",
            "machine": machine_description(),
            "threads": 1,
            "note": "2-core machine shared with other engineers' work while measured: "
            "seconds are upper bounds of a quiet machine's; seconds_min is the least "
            "disturbed step",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    print(f"wrote the 'train' key of {RESULTS}")
    return 0


def end_to_end(args: argparse.Namespace) -> int:
    """One ``adarec run`` on the RetailRocket-sized log, from scratch, timed."""
    sys.path.insert(0, str(Path(__file__).parent))
    import scale_prep

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    csv_path, _ = scale_prep.write_case("retailrocket", work)
    out, cache = work / "run-retailrocket", work / "run-retailrocket-cache"
    for path in (out, cache):  # from scratch: the timing includes preparation
        if path.exists():
            shutil.rmtree(path)
    command = [
        sys.executable, "-m", "adarec", "run", "--dataset", str(csv_path),
        "--config", args.config, "--out", str(out), "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "ADAREC_CACHE_DIR": str(cache)}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    rc = os.waitstatus_to_exitcode(status)
    record: dict[str, Any] = {
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "adarec_command": " ".join(command[2:]),
        "config": args.config,
        "config_text": Path(args.config).read_text(),
        "returncode": rc,
        "seconds": round(seconds, 1),
        "hours": round(seconds / 3600, 3),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 1e6, 2),
        "budget_hours": args.budget_hours,
        "within_budget": rc == 0 and seconds <= args.budget_hours * 3600,
        "machine": machine_description(),
    }
    report_path = out / "report.json"
    if rc == 0 and report_path.exists():
        report = json.loads(report_path.read_text())
        data = json.loads((out / "teacher" / "data.json").read_text())
        teacher, student = report["teacher"], report["student"]

        def ndcg(m: dict[str, Any]) -> dict[str, float]:
            se = m["test"].get("standard_error", {}).get("full", {}).get("NDCG@10")
            return {"ndcg10": m["test"]["full"]["NDCG@10"], "se": se}

        record.update(
            data={k: data[k] for k in ("users", "items", "interactions")},
            stage_seconds=report["seconds"],
            front=front_rows(out / "front" / "front.json"),
            teacher=ndcg(teacher),
            student=ndcg(student),
            ndcg_ratio=report["targets"]["ndcg_ratio"],
            speedup_by_backend=report["speedup_by_backend"],
            macs={"teacher": teacher["macs"], "student": student["macs"]},
            selected=report.get("selected"),
        )
    scale_prep.write_key(RESULTS, "run", record)
    print(json.dumps({k: v for k, v in record.items() if k != "config_text"}, indent=1))
    print(f"wrote the 'run' key of {RESULTS}")
    return 0 if record["within_budget"] else 1


def front_rows(path: Path) -> dict[str, Any] | None:
    """The run's front in brief: the sweep, each distinct student's cost, accuracy and
    speed-up (``budgets``: the sweep's budgets that derived its cell), the front's seconds."""
    if not path.exists():
        return None
    front = json.loads(path.read_text())
    keys = ("budget", "budgets", "macs", "retrained", "valid_ndcg10", "test_ndcg10", "test_se")
    rows = [{k: r.get(k) for k in (*keys, "speedup")} for r in front["students"]]
    return {"sweep": front["sweep"], "students": rows, "seconds": front["seconds"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=("prep", "train", "run"), required=True)
    parser.add_argument("--sizes", default="3416,50000,250000,1000000")
    parser.add_argument("--stages", default="teacher,student,kd")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--negatives", type=int, default=SampledSoftmaxConfig.negatives)
    parser.add_argument("--max-logits-gb", type=float, default=8.0)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: STAGE:ARM:SIZE
    # --part prep
    parser.add_argument("--rows", default="1M,10M,retailrocket", help="prep: cases")
    parser.add_argument("--reference-rows", default="1M,10M", help="prep: row reader's cases")
    parser.add_argument("--work", default="/tmp/adarec-scale", help="prep: generated logs")
    parser.add_argument("--threads", type=int, default=2, help="prep: DuckDB threads")
    parser.add_argument("--one-prep", help=argparse.SUPPRESS)  # internal: ENGINE:CASE:PATH
    # --part run
    parser.add_argument("--config", default=str(ROOT / "configs" / "retailrocket.yaml"))
    parser.add_argument("--budget-hours", type=float, default=6.0, help="run: CPU budget")
    args = parser.parse_args()
    parts = {"prep": prep, "train": train, "run": end_to_end}
    return parts[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
