"""The public release's search settings beside adarec's defaults, on the release's own scene.

Usage: python benchmarks/release_settings.py [--out runs/release-settings]
       [--teacher RUN_DIR] [--only ARM] [--set key=value ...] [--quiet]

One teacher, the paper's NextItNet (hidden 256, 16 residual blocks: configs/paper-nextitnet.yaml
over configs/ml-100k.yaml), trained once on ml-100k. Three searches distil it:

- ``release``: the search settings of the public release (configs/paper.yaml): 4 cells x 3
  nodes, width 64, batch 64, gamma 0.5, the paper's cost form (beta 8 x the one-hot cost
  table), alpha's learning rate 2e-5, no warm-up, no entropy term. Only the causal op set:
  the release's centred ops leak the label (../shared/METHOD.md) and are not reproduced.
- ``adarec``: adarec's defaults (budget 5x, budget-targeted cost, architect with warm-up and
  entropy ramp; batch 64, as the release's).
- ``adarec-500x``: adarec's defaults asked for a student of the release's size: budget 500x
  (the release settings' derived cell costs about 1/500 of this teacher's MACs; each arm's
  MACs are written beside it, so the match can be checked).

All run the same number of search epochs (configs/ml-100k.yaml's) and retrain their derived
cell identically (the ml-100k student schedule), so the search settings are the only
difference. Writes benchmarks/results/release_settings.json: per arm the sampled and
full-ranking student/teacher NDCG@10 ratios, total and body parameter ratios, batch-1 and
batch-256 latency ratios (the teacher and every arm's student timed together in one process,
interleaved, same threads, same histories, eager and TorchScript) and seconds per search
epoch (search steps of all arms timed interleaved in one process, times the steps of an
epoch; the in-run epoch times are kept beside them, but they depend on what else the
machine ran); beside them what the release itself measured on
this kind of machine (METHOD.md) and, per figure, whether each arm beats it.
Finished stages are reused, so the script can be interrupted and rerun. ``--only ARM`` trains
the teacher (when missing) and that arm's pipeline and stops: the arms may train side by
side (one thread each), and a last invocation without ``--only`` measures them together.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from profile_steps import search_stage, training_batches  # benchmarks/, beside this script

from adarec.config import Config, load_config
from adarec.evaluate.latency import machine_description
from adarec.io import atomic_write_json, read_json
from adarec.pipeline.common import StageData, load_stage_data
from adarec.pipeline.run import run_pipeline
from adarec.pipeline.teacher import train_teacher
from adarec.runs import load_run_model
from adarec.serve.measure import measure_runs

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "release_settings.json"

# The release's search, from configs/paper.yaml; the number of epochs is adarec's (the
# release's numbers below came from 30 epochs, the paper's from 200).
RELEASE_SEARCH_KEYS = (
    "batch_size",
    "lr",
    "weight_decay",
    "alpha_lr",
    "alpha_weight_decay",
    "cells",
    "nodes",
    "width",
    "cost_form",
    "beta",
    "warmup",
    "entropy",
    "tau_initial",
    "tau_decay",
    "tau_every",
    "mode",
    "optimization",
)

# What the public release measured on ml-100k with this teacher on a 2-core CPU
# (../shared/METHOD.md, "What happened when the public release was run on ml-100k"). Its
# sampled ratio is on validation; its full-ranking ratio is the one METHOD.md and issue 11
# quote. Larger is better for every figure.
RELEASE_MEASURED = {
    "sampled_ndcg10_ratio": 0.92,
    "full_ndcg10_ratio": 0.82,
    "total_params_ratio": 30.8,
    "latency_ratio_1": 14.0,
    "latency_ratio_256": 14.0,  # "14-20x lower CPU latency": the low end, batch not stated
    "search_seconds_per_epoch": 52.0,  # about 52-58 s over 2,432 sequences at 1 thread
}
RELEASE_SEARCH_SEQUENCES = 2432
BACKENDS = ("eager", "torchscript")


def release_overrides() -> list[str]:
    """``--set`` items for the release's search settings (configs/paper.yaml): its search
    keys and its distillation weight, gamma."""
    paper = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    search = [f"search.{key}={paper['search'][key]}" for key in RELEASE_SEARCH_KEYS]
    return [*search, f"distill.gamma={paper['distill']['gamma']}"]


def arm_overrides() -> dict[str, list[str]]:
    """Each arm's ``--set`` items over the common settings."""
    return {"release": release_overrides(), "adarec": [], "adarec-500x": ["search.budget=500x"]}


def arm_summary(out: Path, report: dict[str, Any], windows: int) -> dict[str, Any]:
    """The figures of one arm, read from its report and its search history (``windows``:
    training windows per search epoch)."""
    teacher, student = report["teacher"], report["student"]
    history = read_json(out / "search" / "history.json")
    # The history's seconds are cumulative; an epoch's are the differences.
    totals = [row["seconds"] for row in history]
    epoch_seconds = [b - a for a, b in zip([0.0, *totals], totals, strict=False)]
    ratio = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    return {
        "cell": student["architecture"],
        "teacher_full_ndcg10": teacher["test"]["full"]["NDCG@10"],
        "student_full_ndcg10": student["test"]["full"]["NDCG@10"],
        "teacher_sampled_ndcg10": teacher["test"]["sampled"]["NDCG@10"],
        "student_sampled_ndcg10": student["test"]["sampled"]["NDCG@10"],
        "full_ndcg10_ratio": ratio(
            student["test"]["full"]["NDCG@10"], teacher["test"]["full"]["NDCG@10"]
        ),
        "sampled_ndcg10_ratio": ratio(
            student["test"]["sampled"]["NDCG@10"], teacher["test"]["sampled"]["NDCG@10"]
        ),
        "params": {"teacher": teacher["params"], "student": student["params"]},
        "total_params_ratio": ratio(teacher["params"]["total"], student["params"]["total"]),
        "body_params_ratio": ratio(teacher["params"]["body"], student["params"]["body"]),
        "macs": {"teacher": teacher["macs"], "student": student["macs"]},
        "macs_ratio": ratio(teacher["macs"], student["macs"]),
        "search_epochs": len(history),
        "search_seconds_per_epoch_in_run": round(statistics.median(epoch_seconds), 2),
        "search_windows": windows,
        "alpha_max_prob": report["search"].get("max_prob_last"),
        "decided_edges": report["search"].get("decided_edges_last"),
    }


def timed_search_epochs(
    cfgs: dict[str, Config], stage_data: StageData, teacher_dir: Path, steps: int
) -> dict[str, dict[str, float]]:
    """Seconds per search epoch of each arm, timed in this process on the same windows,
    steps of the arms interleaved (so that other load on a shared machine hits all alike):
    the median seconds of a search step (supernet, architect past its warm-up, teacher,
    distillation; built as ``benchmarks/profile_steps.py`` does) times the steps of an
    epoch."""
    device = torch.device("cpu")
    teacher, _ = load_run_model(teacher_dir, device)
    teacher.eval()
    stages, batches = {}, {}
    for name, cfg in cfgs.items():
        stages[name] = search_stage(cfg, stage_data, teacher, device)
        batches[name] = training_batches(stage_data.train, cfg.search.batch_size, steps + 1)
    seconds: dict[str, list[float]] = {name: [] for name in cfgs}
    for step in range(steps + 1):
        for name, (stage, epoch) in stages.items():
            start = time.perf_counter()
            stage.train_step(batches[name][step], epoch, step)
            if step:  # the first step of each arm warms up
                seconds[name].append(time.perf_counter() - start)
    result = {}
    for name, cfg in cfgs.items():
        per_step = statistics.median(seconds[name])
        steps_per_epoch = -(-len(stage_data.train) // cfg.search.batch_size)
        result[name] = {
            "seconds_per_step": round(per_step, 4),
            "steps_per_epoch": steps_per_epoch,
            "seconds_per_epoch": round(per_step * steps_per_epoch, 2),
            "timed_steps": steps,
        }
    return result


def joint_latency(
    cfg: Config, teacher_dir: Path, student_dirs: dict[str, Path]
) -> dict[str, dict[str, dict[str, float]]]:
    """Median ms per backend and batch of the teacher and every arm's student, all timed in
    this one process, interleaved repeat by repeat on the same real test histories (so the
    arms' ratios share one teacher timing and one machine load)."""
    b = cfg.bench
    return measure_runs(
        {"teacher": teacher_dir, **student_dirs},
        [int(x) for x in b.batch_sizes],
        b.repeats,
        b.warmup,
        b.threads,
        backends=BACKENDS,
        histories_from=next(iter(student_dirs.values())),
    ).medians()


def latency_figures(latency: dict[str, dict[str, dict[str, float]]], arm: str) -> dict[str, Any]:
    """One arm's latencies beside the teacher's and the teacher/student ratios per backend;
    ``latency_ratio_B`` (the compared figure) is the eager one, as the release timed eager."""
    teacher, student = latency["teacher"], latency[arm]
    ratios = {
        backend: {
            batch: round(teacher[backend][batch] / student[backend][batch], 3)
            for batch in teacher[backend]
        }
        for backend in BACKENDS
    }
    return {
        "latency_ms": {"teacher": teacher, "student": student},
        "latency_ratios": ratios,
        **{f"latency_ratio_{batch}": value for batch, value in ratios["eager"].items()},
    }


def compare(arms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per figure: the release's measurement, each arm's, and whether each arm beats it
    (seconds per epoch: fewer is better, scaled to the release's 2,432 sequences)."""
    table = {}
    for key, measured in RELEASE_MEASURED.items():
        row: dict[str, Any] = {"release_measured": measured}
        for name, arm in arms.items():
            value = arm[key]
            if key == "search_seconds_per_epoch":
                value = round(value * RELEASE_SEARCH_SEQUENCES / arm["search_windows"], 2)
                beats = value < measured
            else:
                beats = value is not None and value > measured
            row[name], row[f"{name}_beats"] = value, beats
        table[key] = row
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/release-settings")
    parser.add_argument("--teacher", default=None, help="reuse a finished teacher run")
    parser.add_argument(
        "--only",
        choices=list(arm_overrides()),
        default=None,
        help="train this arm's pipeline, then stop",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--time-steps", type=int, default=12, help="search steps per arm to time (interleaved)"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    base = yaml.safe_load((ROOT / "configs" / "ml-100k.yaml").read_text())
    teacher_preset = ROOT / "configs" / "paper-nextitnet.yaml"
    common = ["data.dataset=ml-100k", "run.baselines=[]", *args.overrides]
    cfg = load_config(teacher_preset, common, base=base)
    teacher_dir = Path(args.teacher) if args.teacher else out / "teacher"
    if not (teacher_dir / "metrics.json").exists():
        train_teacher(cfg, teacher_dir, args.quiet, resume=True)
    stage_data = load_stage_data(cfg)
    windows = len(stage_data.train)
    arms, cfgs = {}, {}
    for name, extra in arm_overrides().items():
        if args.only not in (None, name):
            continue
        cfgs[name] = load_config(teacher_preset, [*common, *extra], base=base)
        report_file = out / name / "report.json"
        if args.only is None and report_file.exists():
            report = read_json(report_file)  # trained (perhaps by --only); measured below
        else:
            report = run_pipeline(
                cfgs[name], out / name, teacher_dir, baselines=[], quiet=args.quiet
            )
        arms[name] = arm_summary(out / name, report, windows)
        arms[name]["overrides"] = extra
    if args.only:
        print(f"trained the {args.only} arm in {out / args.only}; measure with no --only")
        return 0
    latency = joint_latency(cfg, teacher_dir, {name: out / name / "student" for name in arms})
    for name in arms:
        arms[name].update(latency_figures(latency, name))
    for name, timing in timed_search_epochs(cfgs, stage_data, teacher_dir, args.time_steps).items():
        arms[name]["search_seconds_per_epoch"] = timing["seconds_per_epoch"]
        arms[name]["search_step_timing"] = timing
    for name in arms:
        print(
            f"{name}: full ratio {arms[name]['full_ndcg10_ratio']}, "
            f"sampled ratio {arms[name]['sampled_ndcg10_ratio']}, "
            f"latency x{arms[name]['latency_ratio_1']} @1 / x{arms[name]['latency_ratio_256']} "
            f"@256, {arms[name]['search_seconds_per_epoch']} s per search epoch"
        )
    result = {
        "command": " ".join(["python benchmarks/release_settings.py", *sys.argv[1:]]),
        "machine": machine_description(),
        "threads": torch.get_num_threads() if cfg.bench.threads <= 0 else cfg.bench.threads,
        "threads_search_timing": torch.get_num_threads(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "teacher": {"preset": "configs/paper-nextitnet.yaml over configs/ml-100k.yaml"},
        "arms": arms,
        "release_measured": RELEASE_MEASURED,
        "comparison": compare(arms),
    }
    atomic_write_json(RESULT, result)
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
