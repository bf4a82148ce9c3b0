"""What every stage command shares: run directories, device, data and the metrics file."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarec.config import STAGES, Config, differences, save_config
from adarec.data.preprocess import PreparedData, prepare
from adarec.data.splits import EvalSplit, TrainWindows, eval_split, item_counts, train_windows
from adarec.data.stats import describe
from adarec.errors import UserError
from adarec.evaluate.evaluator import evaluate
from adarec.io import atomic_write_json, read_json, writable_dir
from adarec.models.base import count_parameters
from adarec.runs import (
    CHECKPOINT_DIRS,
    DATA_FILE,
    HISTORIES_FILE,
    ITEMS_FILE,
    POPULARITY_FILE,
    TEST_RANKS_FILE,
    check_run_data,
    has_weights,
    load_run_config,
    read_metrics,
    resolve_from_run,
)
from adarec.runtime import distributed as dist
from adarec.runtime.logs import setup_logging
from adarec.runtime.seed import seed_everything
from adarec.train.loop import EARLIER_SECONDS_FILE

log = logging.getLogger("adarec")


@dataclass
class StageData:
    """The prepared dataset with its training windows and both evaluation splits."""

    data: PreparedData
    train: TrainWindows
    valid: EvalSplit
    test: EvalSplit


# What a resumed run may change: how long it trains, how it is measured and where it runs.
# Anything else (data, seed, model, losses, optimiser) would make the run no longer match
# its weights, or silently be ignored by the restored optimiser state.
RESUMABLE_KEYS = tuple(
    f"{stage}.{key}"
    for stage in STAGES
    for key in ("epochs", "patience", "eval_every", "max_steps_per_epoch")
) + ("device", "amp")
# front.* says which students the front derives, not how any one of them trains.
RESUMABLE_SECTIONS = ("eval.", "bench.", "run.", "front.")


def _differences_in_effect(saved: Config, cfg: Config, run_dir: Path) -> dict[str, Any]:
    """``differences(saved, cfg)``, less the ``sampled_softmax.*`` keys when neither config
    samples the run's catalogue (below both ``min_items``: full softmax either way), so a
    changed sampling default does not refuse runs it never touched."""
    changed = differences(saved, cfg)
    data_file = Path(run_dir) / "data.json"
    if not any(key.startswith("sampled_softmax.") for key in changed) or not data_file.exists():
        return changed
    items = read_json(data_file, dict, "run the stage again").get("items")
    floor = min(saved.sampled_softmax.min_items, cfg.sampled_softmax.min_items)
    if isinstance(items, int) and items < floor:
        changed = {k: v for k, v in changed.items() if not k.startswith("sampled_softmax.")}
    return changed


def check_resume_config(cfg: Config, run_dir: Path) -> None:
    """Refuse a resume whose configuration differs from the saved one where it matters."""
    saved = load_run_config(run_dir)
    changed = {
        key: values
        for key, values in _differences_in_effect(saved, cfg, run_dir).items()
        if key not in RESUMABLE_KEYS and not key.startswith(RESUMABLE_SECTIONS)
    }
    if changed:
        listed = ", ".join(f"{key} ({old!r} -> {new!r})" for key, (old, new) in changed.items())
        raise UserError(
            f"--resume: the configuration differs from the one {run_dir} was started with: "
            f"{listed}; the saved weights belong to the saved settings. Resume with them "
            "(only epochs, patience, eval_every, max_steps_per_epoch, eval.*, bench.*, "
            "device and amp may change), or choose another --out"
        )


# What a finished stage depends on, by kind (a key, or a section ending in "."): adarec run
# reuses a finished stage only when these are unchanged and its data is the same. eval.*,
# bench.*, run.* and front.* measure, report or select; device and amp say where it ran.
TEACHER_KEYS = ("seed", "data.", "model.", "train.", "sampled_softmax.")
# The search's cost model is built for the student's positions; it distils (distill.*).
SEARCH_KEYS = (*TEACHER_KEYS, "search.", "distill.", "student.positions")
STUDENT_KEYS = (*SEARCH_KEYS, "student.")


def _depends(key: str, keys: tuple[str, ...]) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in keys)


def check_reusable(
    run_dir: Path,
    cfg: Config,
    keys: tuple[str, ...],
    teacher_dir: Path | None = None,
    ignore: tuple[str, ...] = (),
) -> None:
    """Refuse to reuse the finished stage in ``run_dir`` for ``cfg`` unless it ran with the
    same settings (``keys``: ``TEACHER_KEYS``, ``SEARCH_KEYS``, ``STUDENT_KEYS``; less
    ``ignore``), on the same data (its fingerprint), and, for a search, distilled
    ``teacher_dir``."""
    run_dir = Path(run_dir)
    saved = load_run_config(run_dir)
    changed = {
        k: v
        for k, v in _differences_in_effect(saved, cfg, run_dir).items()
        if _depends(k, keys) and not _depends(k, ignore)
    }
    if changed:
        listed = ", ".join(f"{key} ({old!r} -> {new!r})" for key, (old, new) in changed.items())
        raise UserError(
            f"{run_dir} holds a finished stage that ran with other settings: {listed}; a "
            "finished stage is reused only with its own (eval.*, bench.*, run.*, front.*, "
            "device and amp may change). Give its settings, choose another --out, or remove "
            f"{run_dir} to run it again"
        )
    if teacher_dir is not None:
        record = read_json(run_dir / "teacher.json", dict, "run the search again")
        recorded = record.get("run_dir")
        distilled = None if recorded is None else resolve_from_run(recorded, run_dir)
        if distilled is None or distilled.resolve() != Path(teacher_dir).resolve():
            raise UserError(
                f"{run_dir} holds a finished search of another teacher "
                f"({distilled or record.get('module')}, not {teacher_dir}); choose another "
                f"--out, or remove {run_dir} to search again"
            )
    check_run_data(run_dir, prepare(cfg.data, cfg.seed))


def start_run(cfg: Config, run_dir: Path, resume: bool, quiet: bool) -> torch.device:
    """Check the run directory, set up device, process group, seed and logging.

    Nothing is written before every check has passed: a finished run is read-only, and a
    resumed run must keep its configuration (see ``check_resume_config``).
    """
    run_dir = Path(run_dir)
    if (run_dir / "metrics.json").exists():
        raise UserError(
            f"{run_dir} already holds a finished run, which is never changed (not even with "
            f"--resume); re-evaluate it with `adarec evaluate {run_dir}` or choose another --out"
        )
    if (run_dir / "checkpoints" / "last.pt").exists() and not resume:
        raise UserError(
            f"{run_dir} holds an interrupted run; pass --resume to continue it "
            "or choose another --out"
        )
    if resume and has_weights(run_dir) and (run_dir / "config.yaml").exists():
        check_resume_config(cfg, run_dir)
    device = dist.resolve_device(cfg.device)
    dist.init_distributed(device)
    seed_everything(cfg.seed)
    if dist.is_main():
        writable_dir(run_dir, "run directory")
        save_config(cfg, run_dir / "config.yaml")
    setup_logging(run_dir, quiet)
    log.info("run directory %s, device %s, world size %d", run_dir, device, dist.world_size())
    return device


def load_stage_data(cfg: Config, quiet: bool = True) -> StageData:
    """Prepare (or load from cache) the dataset; rank 0 prepares first, the others reuse it."""
    if not dist.is_main():
        dist.barrier()
    data = prepare(cfg.data, cfg.seed, progress=not quiet and dist.is_main())
    if dist.is_main():
        dist.barrier()
    for entry in data.filter_log:
        removed = entry["rows_before"] - entry["rows_after"]
        if removed:
            log.info(
                "data filter '%s': %d of %d rows removed",
                entry["step"],
                removed,
                entry["rows_before"],
            )
    # Under torchrun each rank builds the windows of its own shard of the users only.
    shard = (dist.rank(), dist.world_size()) if dist.world_size() > 1 else None
    mine = data.shard(*shard) if shard else data
    windows = train_windows(mine, cfg.data.max_len, cfg.data.long_sequences, cfg.data.min_window)
    per_rank = dist.all_gather_objects(len(windows))  # every rank must stop alike
    if sum(per_rank) == 0:
        raise UserError("no training windows left: sequences are too short for leave-one-out")
    if min(per_rank) == 0:
        raise UserError(
            f"{data.num_users} users are too few to give each of {len(per_rank)} processes "
            f"training windows (windows per process: {per_rank}); run fewer processes"
        )
    log.info(
        "data %s: %d users, %d items, %d interactions, %d training windows%s",
        data.name,
        data.num_users,
        data.num_items,
        data.num_interactions,
        sum(per_rank),
        f" ({len(windows)} from this process's shard of the users)" if shard else "",
    )
    return StageData(
        data=data,
        train=TrainWindows(windows, shard),
        valid=eval_split(data, "valid", cfg.data.max_len),
        test=eval_split(data, "test", cfg.data.max_len),
    )


def check_same_data(source_dir: Path, stage_data: StageData) -> None:
    """The run a stage follows (a teacher, a search) must have used this item catalogue."""
    items = read_json(Path(source_dir) / ITEMS_FILE)
    here = stage_data.data.item_ids
    if items != here:
        if len(items) != len(here):
            detail = f"{len(items) - 1} items, here {len(here) - 1}"
        else:  # as many items, other ids or another order: say where they part
            first = next(i for i, (a, b) in enumerate(zip(items, here, strict=True)) if a != b)
            detail = (
                f"{len(here) - 1} items in both, but item {first} is {items[first]!r} "
                f"there and {here[first]!r} here"
            )
        raise UserError(
            f"the run in {source_dir} was trained on another dataset or preprocessing "
            f"({detail}); use the data settings of the run this stage follows"
        )


def check_teacher_window(teacher_dir: Path, max_len: int) -> None:
    """A stage that distils the teacher of ``teacher_dir`` must use its window length,
    and the teacher's run must be finished and whole (its metrics.json, which the report
    reads at the end); checked at the stage's start, before anything is written or trained."""
    read_metrics(teacher_dir)
    teacher_len = load_run_config(teacher_dir).data.max_len
    if teacher_len != max_len:
        # Longer: positions the teacher has no embedding for (an IndexError mid-search);
        # shorter: windows cut otherwise than those it was trained and evaluated on.
        raise UserError(
            f"data.max_len {max_len} differs from the teacher's ({teacher_len}, in "
            f"{teacher_dir}): a stage distils the teacher on the windows it was trained on; "
            f"set data.max_len={teacher_len}"
        )


def write_data_files(run_dir: Path, data: PreparedData) -> None:
    """The id mapping, training popularity and real test histories (so the run can be
    served, exported and timed alone), the dataset statistics and the data's fingerprint.
    A run that already holds weights keeps its data: other data is refused (a resume must
    continue on what it started with)."""
    run_dir = Path(run_dir)
    if has_weights(run_dir):
        check_run_data(run_dir, data)
    if dist.is_main():
        atomic_write_json(run_dir / ITEMS_FILE, data.item_ids)
        write_serving_files(run_dir, data)
        write_data_record(run_dir, data)


def write_data_record(run_dir: Path, data: PreparedData) -> None:
    """``DATA_FILE``: the dataset statistics and the fingerprint that pins the run's data."""
    atomic_write_json(
        Path(run_dir) / DATA_FILE, {**describe(data), "fingerprint": data.fingerprint()}
    )


def write_serving_files(run_dir: Path, data: PreparedData, only_missing: bool = False) -> list[str]:
    """What serving, bench and the report read instead of preparing the data: training
    popularity and real test histories. ``only_missing`` completes a run from before they
    were written (``adarec evaluate`` does, after checking the data is the run's own).
    Returns the names of the files written."""
    files = {
        POPULARITY_FILE: lambda: [int(c) for c in item_counts(data)],
        HISTORIES_FILE: lambda: latency_histories(data),
    }
    written = []
    for name, content in files.items():
        if not (only_missing and (Path(run_dir) / name).exists()):
            atomic_write_json(Path(run_dir) / name, content())
            written.append(name)
    return written


# bench and the report time batches of real test histories: this many are kept with a run,
# enough for the default batch sizes (a larger batch repeats them, as a small split does).
KEPT_HISTORIES = 1024


def latency_histories(data: PreparedData) -> list[list[int]]:
    """The first ``KEPT_HISTORIES`` test inputs, oldest item first, cut to the window."""
    # The data was prepared for the run's window length (it is part of the cache key).
    max_len = data.options["max_len"]
    return [seq[:-1][-max_len:].tolist() for seq in data.sequences[:KEPT_HISTORIES]]


def final_metrics(
    model: nn.Module,
    cfg: Config,
    stage_data: StageData,
    device: torch.device,
    model_name: str,
    train_seconds: float,
    epochs: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metrics.json contract: valid and test, full ranking and sampled, params, time."""
    ev = cfg.eval
    metrics: dict[str, Any] = {
        "dataset": stage_data.data.name,
        "model": model_name,
        "valid": evaluate(model, stage_data.valid, ev.ks, ev.batch_size, device, ev.exclude_seen),
        "test": evaluate(
            model, stage_data.test, ev.ks, ev.batch_size, device, ev.exclude_seen, with_ranks=True
        ),
        "params": count_parameters(model),
        "train_seconds": round(train_seconds, 2),
        "epochs": epochs,
        "exclude_seen": ev.exclude_seen,
    }
    metrics.update(extra or {})
    return metrics


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Write metrics.json, which marks the stage finished (and read-only).

    ``train_seconds`` is this process's time; a resumed run adds what earlier processes
    spent training, so the total covers the whole run.
    """
    metrics["train_seconds"] = round(metrics["train_seconds"] + earlier_seconds(run_dir), 2)
    ranks = metrics["test"].pop("ranks", None)
    if dist.is_main():
        if ranks is not None:  # before metrics.json, which marks the stage finished
            write_test_ranks(run_dir, ranks)
        atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    # metrics.json marks a finished stage: no rank may go on to read it before it exists.
    dist.barrier()
    test = metrics["test"]
    log.info(
        "%s test: NDCG@10 %.4f HR@10 %.4f (sampled NDCG@10 %.4f HR@10 %.4f)",
        metrics["model"],
        test["full"]["NDCG@10"],
        test["full"]["HR@10"],
        test["sampled"]["NDCG@10"],
        test["sampled"]["HR@10"],
    )


def write_test_ranks(run_dir: Path, ranks: list[int]) -> None:
    """Every test user's full-ranking rank (``TEST_RANKS_FILE``), for paired comparisons."""
    atomic_write_json(Path(run_dir) / TEST_RANKS_FILE, {"full": ranks})


def earlier_seconds(run_dir: Path) -> float:
    """Training seconds that earlier processes of a resumed run spent in its loops."""
    paths = [Path(run_dir) / name / EARLIER_SECONDS_FILE for name in CHECKPOINT_DIRS]
    return sum(float(read_json(p, dict).get("seconds", 0.0)) for p in paths if p.is_file())
