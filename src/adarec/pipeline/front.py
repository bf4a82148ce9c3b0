"""The front of one search: students at a sweep of budgets, estimated cheaply, the ones
that can be on the front retrained, measured in the serving path, and one selected.

Layout of ``adarec front SEARCH_DIR --out FRONT_DIR`` (default: beside the search, front/):
``estimates/eN/BUDGET-CELL/`` (one per distinct cell: the inherited supernet weights after N
epochs of the student's loop, ``estimate.json``), ``students/BUDGET-CELL/`` (each a normal
student run directory, ``run_student`` under ``student.budget`` BUDGET), ``front.json``
and ``front.png``. Every step is resumable: a finished estimate or student is reused (also
under another budget label, when a changed sweep derives the same cell), an interrupted
one resumes from its checkpoint.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adarec.config import Budget, Config, parse_budget
from adarec.errors import UserError
from adarec.evaluate.evaluator import evaluate
from adarec.evaluate.latency import machine_description
from adarec.evaluate.metrics import per_example_gains
from adarec.io import atomic_write_json, read_json, writable_dir
from adarec.models.base import count_parameters
from adarec.nas.budget import CostModel, model_cost
from adarec.nas.front import (
    Candidate,
    RetrainingCap,
    SweepPoint,
    derive_sweep,
    dominated_by,
    require_teacher_cost,
    retraining_order,
    select_student,
    sweep_speedups,
    within_budget,
)
from adarec.nas.genotype import genotype_to_dict, genotype_to_text
from adarec.pipeline.common import STUDENT_KEYS, check_reusable, check_teacher_window
from adarec.pipeline.search import SUPERNET_FILE, distilled_teacher
from adarec.pipeline.stage import StageRun
from adarec.pipeline.student import (
    cost_model_of_search,
    kd_teacher_dir,
    new_student,
    retraining_stage,
    run_student,
)
from adarec.runs import load_run_model, read_metrics, relative_to_run, resolve_from_run
from adarec.runtime.logs import setup_logging
from adarec.runtime.seed import seed_everything

log = logging.getLogger("adarec")

FRONT_FILE = "front.json"
FRONT_FIGURE = "front.png"
ESTIMATE_FILE = "estimate.json"
METRIC = "NDCG@10"
# The batch whose measured latency orders the students ("fastest"): one request, what the
# compiled serving path answers per event.
SELECT_BATCH = "1"


def front_dir_of(search_dir: Path) -> Path:
    """Where ``adarec front`` writes by default: beside the search."""
    return Path(search_dir).parent / "front"


def build_front(
    cfg: Config,
    search_dir: Path,
    out: Path | None = None,
    quiet: bool = False,
    finished: Sequence[Path] = (),
) -> dict[str, Any]:
    """Build (or resume) the front of the finished search in ``search_dir`` into ``out``,
    select a student by ``run.keep`` / ``run.select_budget`` and write front.json and
    front.png; returns front.json's content.

    ``finished``: student run directories retrained already from this search (the
    pipeline's student/); a front cell equal to one of theirs reuses it.
    """
    search_dir = Path(search_dir)
    out = Path(out) if out is not None else front_dir_of(search_dir)
    started = time.perf_counter()
    search = read_metrics(search_dir)  # a finished search, or one clear error
    model = cost_model_of_search(search_dir)
    teacher_dir = _teacher_run(search_dir)
    check_teacher_window(teacher_dir, cfg.data.max_len)  # before any estimate or retraining
    teacher = read_metrics(teacher_dir)
    keep = cfg.run.keep
    budget = parse_budget(cfg.run.select_budget) if cfg.run.select_budget else None
    if keep is None and budget is None:
        raise UserError(
            "config key 'run.keep' is null and run.select_budget is empty: nothing to select "
            "by; give --keep, --budget or both"
        )
    writable_dir(out, "front directory")
    setup_logging(out, quiet)

    supernet, _ = load_run_model(search_dir, "cpu", filename=SUPERNET_FILE)
    argmax = supernet.genotype()
    own = parse_budget(model.budget)
    require_teacher_cost(model)
    speedups = sweep_speedups(
        model.teacher / model.cheapest(len(argmax.nodes)),
        cfg.front.budgets,
        include=[own.value] if own.kind == "speedup" else [],
    )
    points = derive_sweep(list(supernet.alphas), supernet.op_names, argmax, model, speedups)
    log.info(
        "front: %d speed-ups %s -> %d distinct cells",
        len(speedups),
        ", ".join(f"{s:g}x" for s in speedups),
        len(points),
    )

    estimates = _estimates(cfg, search_dir, out, points, supernet, quiet)
    values = [e["valid"]["full"][METRIC] for e in estimates]
    dominators = dominated_by([p.cost for p in points], values, _difference_se(estimates))
    for point, by in zip(points, dominators, strict=True):
        if by is not None:
            log.info(
                "front: %s not retrained (%s is cheaper and better)",
                point.budget,
                points[by].budget,
            )
    students, skipped = _retrain_front(
        cfg, search_dir, out, points, estimates, dominators, teacher, model, budget, quiet, finished
    )
    setup_logging(out, quiet)
    measure_started = time.perf_counter()
    latency, teacher_macs = _measure(
        cfg, teacher_dir, {points[k].budget: d for k, d in students.items()}
    )
    measure_seconds = time.perf_counter() - measure_started

    rows = [
        _row(point, estimate, dominators[k], points, students.get(k), latency, out, skipped.get(k))
        for k, (point, estimate) in enumerate(zip(points, estimates, strict=True))
    ]
    teacher_row = _teacher_row(teacher, teacher_dir, model, teacher_macs, latency, out)
    selection = select_student(
        [_candidate(r) for r in rows if r["retrained"]],
        teacher_row["valid_ndcg10"],
        keep,
        budget,
        model.teacher,
        model.unit,
    )
    selected = {
        "name": selection.name,
        "budget": selection.name,
        "keep": keep,
        "select_budget": selection.budget,
        "met": selection.met,
        "reason": selection.reason,
        "closest": selection.closest,
        "run_dir": next((r["run_dir"] for r in rows if r["budget"] == selection.name), None),
    }
    log.info("front selection: %s", selection.reason)
    estimate_seconds = math.fsum(r["estimate"]["seconds"] for r in rows)
    retrain_seconds = math.fsum(r["retrain_seconds"] for r in rows if r["retrained"])
    front = {
        "search": relative_to_run(search_dir, out),
        "search_budget": model.budget,
        "cost_unit": model.unit,
        "estimate_epochs": cfg.front.estimate_epochs,
        "retrain": cfg.front.retrain,
        "max_cost": cfg.front.max_cost if cfg.front.retrain == "needed" else None,
        "sweep": [f"{s:g}x" for s in speedups],
        "teacher": teacher_row,
        "students": rows,
        "selected": selected,
        "seconds": {
            "search": search["train_seconds"],
            "estimates": round(estimate_seconds, 2),
            "retraining": round(retrain_seconds, 2),
            "measure": round(measure_seconds, 2),
            # What the front adds to its search (issue 27: at most one search and one
            # retraining more).
            "front": round(estimate_seconds + retrain_seconds + measure_seconds, 2),
            "this_call": round(time.perf_counter() - started, 2),
        },
        "machine": machine_description(),
        "threads": torch.get_num_threads() if cfg.bench.threads <= 0 else cfg.bench.threads,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    }
    from adarec.plots import plot_front

    plot_front(front, out / FRONT_FIGURE)
    atomic_write_json(out / FRONT_FILE, front)
    log.info("front written to %s", out / FRONT_FILE)
    return front


def install_selected(front: dict[str, Any], front_dir: Path, student_dir: Path) -> str:
    """Make ``student_dir`` (the pipeline's student/, what serve, export and evaluate take)
    a copy of the front's selected student, or of the closest one when nothing met the
    request; returns its budget label. A student/ holding another cell (a run asked again
    with another keep or budget) is replaced whole, never half-written."""
    chosen = front["selected"]["name"] or front["selected"]["closest"]
    row = next(r for r in front["students"] if r["budget"] == chosen and r["retrained"])
    student_dir = Path(student_dir)
    if (student_dir / "metrics.json").exists():
        if read_metrics(student_dir).get("architecture") == row["cell"]:
            return chosen
        log.info("student/ held another cell than the front's selection: replaced")
    source = resolve_from_run(row["run_dir"], front_dir)
    staging = student_dir.with_name(f".{student_dir.name}.installing")
    shutil.rmtree(staging, ignore_errors=True)
    # Checkpoints only resume a retraining; the copy is a finished run.
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns("checkpoints"))
    if student_dir.exists():
        retired = student_dir.with_name(f".{student_dir.name}.replaced")
        shutil.rmtree(retired, ignore_errors=True)
        student_dir.rename(retired)
        staging.rename(student_dir)
        shutil.rmtree(retired)
    else:
        staging.rename(student_dir)
    log.info("student/ is the front's %s (%s)", chosen, front["selected"]["reason"])
    return chosen


def _teacher_run(search_dir: Path) -> Path:
    """The teacher run the search distilled (the front compares every student with it)."""
    recorded = read_json(search_dir / "teacher.json", dict, "run the search again").get("run_dir")
    if recorded is None:
        raise UserError(
            f"the search in {search_dir} distilled a teacher module given in Python; the "
            "front needs the teacher's run directory (its validation NDCG@10 and latency)"
        )
    teacher_dir = resolve_from_run(recorded, search_dir)
    if not (teacher_dir / "metrics.json").exists():
        raise UserError(f"the search's teacher {teacher_dir} is not a finished run")
    return teacher_dir


def estimate_config(cfg: Config) -> Config:
    """The student's configuration for an estimate: ``front.estimate_epochs`` epochs of its
    loop, validated once at the end (no early stopping over so few epochs)."""
    variant = copy.deepcopy(cfg)
    epochs = cfg.front.estimate_epochs
    variant.student.epochs = epochs
    variant.student.patience = 0
    variant.student.eval_every = max(1, epochs)
    variant.student.budget = ""  # each estimate is given its cell
    return variant


def _finished(root: Path, filename: str) -> dict[str, tuple[Path, dict[str, Any]]]:
    """{architecture (as JSON text): (directory, content of ``filename``)} under ``root``."""
    import json

    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(root.glob(f"*/{filename}")):
        content = read_json(path, dict, f"remove {path.parent} to estimate it again")
        if "architecture" in content:
            found.setdefault(
                json.dumps(content["architecture"], sort_keys=True), (path.parent, content)
            )
    return found


def _key(point: SweepPoint) -> str:
    import json

    return json.dumps(genotype_to_dict(point.genotype), sort_keys=True)


def _point_dir(root: Path, point: SweepPoint) -> Path:
    """``root/BUDGET-CELL``: named by the cell too, so a folder another derivation left at
    the same budget (another cell, after an upgrade or other sweep) is never resumed."""
    import hashlib

    return root / f"{point.budget}-{hashlib.sha256(_key(point).encode()).hexdigest()[:8]}"


def _estimates(
    cfg: Config,
    search_dir: Path,
    out: Path,
    points: list[SweepPoint],
    supernet: torch.nn.Module,
    quiet: bool,
) -> list[dict[str, Any]]:
    """Every point's estimate: a finished one reused, the others trained (one StageRun:
    the data is loaded once for all of them)."""
    variant = estimate_config(cfg)
    root = out / "estimates" / f"e{variant.student.epochs}"
    found = _finished(root, ESTIMATE_FILE) if root.is_dir() else {}
    if found:  # estimates are reused by cell: only those of these settings
        check_reusable(root, variant, STUDENT_KEYS, ignore=("student.budget",))
    records: list[dict[str, Any] | None] = []
    for point in points:
        hit = found.get(_key(point))
        records.append(None if hit is None else {**hit[1], "run_dir": str(hit[0])})
    missing = [k for k, r in enumerate(records) if r is None]
    if missing:
        run = StageRun(variant, root, resume=True, quiet=quiet, data_of=search_dir)
        teacher = None
        if variant.student.loss == "kd":
            teacher_dir = kd_teacher_dir(variant, search_dir, None)
            teacher = distilled_teacher(
                teacher_dir, None, run.data, variant.data.max_len, run.device
            )
        supernet.to(run.device)
        for k in missing:
            records[k] = _estimate(variant, run, search_dir, points[k], supernet, teacher, root)
    return [r for r in records if r is not None]


def _estimate(
    cfg: Config,
    run: StageRun,
    search_dir: Path,
    point: SweepPoint,
    supernet: torch.nn.Module,
    teacher: torch.nn.Module | None,
    root: Path,
) -> dict[str, Any]:
    """One point's validation NDCG@10 from the inherited weights after a short fine-tune,
    in the library's training loop; written to ``root/BUDGET-CELL/estimate.json``."""
    directory = _point_dir(root, point)
    seed_everything(cfg.seed)  # every estimate starts alike, whatever ran before it
    num_items = run.data.data.num_items
    student = new_student(cfg, point.genotype, num_items, search_dir, run.device, supernet)
    stage = retraining_stage(cfg, student, teacher, run.device, run.sampler())
    result = run.train(stage, cfg.student, f"estimate {point.budget}", run_dir=directory)
    evaluated = time.perf_counter()
    ev = cfg.eval
    valid = evaluate(
        student, run.data.valid, ev.ks, ev.batch_size, run.device, ev.exclude_seen, with_ranks=True
    )
    ranks = valid.pop("ranks")
    record = {
        "budget": point.budget,
        "architecture": genotype_to_dict(point.genotype),
        "epochs": cfg.student.epochs,
        "valid": valid,
        # Per-user ranks: candidates are compared paired, over the same validation users.
        "valid_ranks": ranks,
        "params": count_parameters(student),
        "macs": model_cost(student, num_items, cfg.data.max_len, "macs"),
        "seconds": round(result.seconds + time.perf_counter() - evaluated, 2),
    }
    atomic_write_json(directory / ESTIMATE_FILE, record)
    log.info(
        "estimate %s: validation %s %.4f (%d epochs, %.0f s)",
        point.budget,
        METRIC,
        valid["full"][METRIC],
        cfg.student.epochs,
        record["seconds"],
    )
    return {**record, "run_dir": str(directory)}


def _difference_se(estimates: list[dict[str, Any]]) -> list[list[float]]:
    """Standard error of each pair's difference of validation NDCG@10: paired over the
    validation users (users hard for every student cancel), or from the two standard
    errors where ranks are missing."""
    k = int(METRIC.split("@")[1])
    gains = [
        per_example_gains(np.asarray(e["valid_ranks"], dtype=np.float64), [k])[METRIC]
        if e.get("valid_ranks")
        else None
        for e in estimates
    ]
    own = [e["valid"]["standard_error"]["full"][METRIC] for e in estimates]
    matrix = []
    for i, gi in enumerate(gains):
        row = []
        for j, gj in enumerate(gains):
            if gi is not None and gj is not None and len(gi) == len(gj) and len(gi) > 1:
                difference = gj - gi
                row.append(float(difference.std(ddof=1) / math.sqrt(len(difference))))
            else:
                row.append(math.hypot(own[i], own[j]))
        matrix.append(row)
    return matrix


def _retrain_front(
    cfg: Config,
    search_dir: Path,
    out: Path,
    points: list[SweepPoint],
    estimates: list[dict[str, Any]],
    dominators: list[int | None],
    teacher: dict[str, Any],
    model: CostModel,
    budget: Budget | None,
    quiet: bool,
    finished: Sequence[Path],
) -> tuple[dict[int, Path], dict[int, str]]:
    """Retrain the candidates; returns {point: run dir} and {point: why it was not
    retrained}.

    ``front.retrain`` all: every candidate not dominated (the whole front). needed (the
    default), in ``retraining_order``: with a keep, a candidate is not needed once a
    cheaper one (within the budget, if any) keeps it: it is slower in the cost model, so it
    could not be selected. Without a keep (the most accurate within a budget), every
    candidate within the budget is. ``front.max_cost`` caps needed's time: a candidate
    whose predicted retraining would take search plus front past that many times one
    search plus one retraining is not retrained.
    """
    keep = cfg.run.keep
    threshold = None if keep is None else keep * teacher["valid"]["full"][METRIC]
    needed = cfg.front.retrain == "needed"
    students: dict[int, Path] = {}
    skipped: dict[int, str] = {}
    for k, point in enumerate(points):
        if dominators[k] is not None:
            skipped[k] = f"{points[dominators[k]].budget} is cheaper and better"
        elif budget is not None and _outside(point, estimates[k], budget, model) is True:
            skipped[k] = f"over the budget {budget}"
    eligible = [k for k in range(len(points)) if k not in skipped]
    costs = [p.cost for p in points]
    order = eligible
    if needed:  # the order among the candidates that can be selected at all
        ranks = retraining_order([costs[k] for k in eligible], threshold is not None)
        order = [eligible[r] for r in ranks]
    cap = None
    if needed and cfg.front.max_cost is not None:
        cap = RetrainingCap(cfg.front.max_cost, read_metrics(search_dir)["train_seconds"])
    spent = math.fsum(e["seconds"] for e in estimates)
    retrained: list[tuple[float, float]] = []  # (estimate s, retraining s) for the cap
    keeping: list[int] = []  # retrained candidates that keep (and fit the budget)
    for k in order:
        point = points[k]
        cheaper = [j for j in keeping if costs[j] < costs[k] or (costs[j] == costs[k] and j < k)]
        if needed and cheaper:
            skipped[k] = f"not needed: the cheaper {points[cheaper[0]].budget} keeps {keep:g}"
            continue
        if cap is not None:
            fits, predicted = cap.allows(spent, estimates[k]["seconds"], retrained)
            if not fits:
                skipped[k] = (
                    f"over the front's time cap: about {predicted:.0f} s more would take "
                    f"search and front past {cap.max_cost:g} x (search + one retraining)"
                )
                log.info("front: %s not retrained (%s)", point.budget, skipped[k])
                continue
        students[k] = _retrain(cfg, search_dir, out / "students", point, quiet, finished)
        metrics = read_metrics(students[k])
        spent += metrics["train_seconds"]
        retrained.append((estimates[k]["seconds"], metrics["train_seconds"]))
        valid = metrics["valid"]["full"][METRIC]
        fits = budget is None or _outside(point, estimates[k], budget, model) is False
        if needed and threshold is not None and valid >= threshold and fits:
            keeping.append(k)
            log.info("front: %s keeps %g; dearer students are not needed", point.budget, keep)
    return students, skipped


def _outside(
    point: SweepPoint, estimate: dict[str, Any], budget: Budget, model: CostModel
) -> bool | None:
    """Whether ``point`` is over ``budget`` before it is measured; None when only its
    measured latency can tell (an ms budget of a search that counts MACs)."""
    if budget.kind == "ms" and model.unit != "ms":
        return None
    candidate = Candidate(point.budget, 0.0, point.cost, estimate["macs"])
    return not within_budget(candidate, budget, model.teacher, model.unit)


def finished_student(
    cfg: Config, architecture: dict[str, Any], run_dirs: Sequence[Path]
) -> Path | None:
    """The first of ``run_dirs`` that is a finished student of ``architecture`` (a cell's
    student is its cell's under any budget's name), or None. One that trained with other
    settings than ``cfg`` is refused, not reused (issue 29: old results for new settings)."""
    for run_dir in map(Path, run_dirs):
        finished = (run_dir / "metrics.json").exists()
        if finished and read_metrics(run_dir).get("architecture") == architecture:
            check_reusable(run_dir, cfg, STUDENT_KEYS, ignore=("student.budget",))
            return run_dir
    return None


def _retrain(
    cfg: Config,
    search_dir: Path,
    root: Path,
    point: SweepPoint,
    quiet: bool,
    finished: Sequence[Path],
) -> Path:
    """The student of ``point``, retrained as the student stage does (``student.budget``
    set to its budget) into ``root/BUDGET-CELL``; a finished run of the same cell is reused."""
    architecture = genotype_to_dict(point.genotype)
    reused = finished_student(cfg, architecture, [*map(Path, finished), *sorted(root.glob("*"))])
    if reused is not None:
        log.info("front: %s reuses the finished student %s", point.budget, reused)
        return reused
    run_dir = _point_dir(root, point)
    variant = copy.deepcopy(cfg)
    variant.student.budget = point.budget
    metrics = run_student(variant, run_dir, search_dir, quiet, resume=True)
    if metrics["architecture"] != architecture:  # the same derivation: cannot differ
        raise RuntimeError(f"{run_dir} derived another cell than the front at {point.budget}")
    return run_dir


def _measure(
    cfg: Config, teacher_dir: Path, students: dict[str, Path]
) -> tuple[dict[str, dict[str, float]], int]:
    """Median ms per batch of the teacher and every retrained student in the serving path
    (``measure_runs``, backend "compiled": the compiled step for students, the teacher's
    TorchScript graph), one process, interleaved; and the teacher's MACs per full history."""
    from adarec.serve.measure import measure_runs  # serving is built on the pipeline's runs

    b = cfg.bench
    measured = measure_runs(
        {"teacher": teacher_dir, **students},
        [int(x) for x in b.batch_sizes],
        b.repeats,
        b.warmup,
        b.threads,
        backends=["compiled"],
        histories_from=next(iter(students.values()), teacher_dir),
    )
    latency = {label: per["compiled"] for label, per in measured.medians().items()}
    spec = measured.models["teacher"][1]
    macs = model_cost(measured.models["teacher"][0], spec["num_items"], spec["max_len"], "macs")
    return latency, int(macs)


def _ndcg(split: dict[str, Any]) -> tuple[float, float]:
    return split["full"][METRIC], split.get("standard_error", {}).get("full", {}).get(METRIC, 0.0)


def _row(
    point: SweepPoint,
    estimate: dict[str, Any],
    dominator: int | None,
    points: list[SweepPoint],
    run_dir: Path | None,
    latency: dict[str, dict[str, float]],
    out: Path,
    skipped: str | None = None,
) -> dict[str, Any]:
    """front.json's entry of one student (validation/test and latency when retrained;
    ``skipped``: why it was not)."""
    valid, valid_se = _ndcg(estimate["valid"])
    row: dict[str, Any] = {
        "budget": point.budget,
        "speedup_target": point.speedup,
        "budgets": [f"{s:g}x" for s in point.speedups],
        "cell": genotype_to_dict(point.genotype),
        "cell_text": genotype_to_text(point.genotype),
        "params": estimate["params"],
        "macs": estimate["macs"],
        "cost": point.cost,  # modelled, in front.json's cost_unit
        "estimate": {
            "valid_ndcg10": valid,
            "valid_se": valid_se,
            "epochs": estimate["epochs"],
            "seconds": estimate["seconds"],
            "run_dir": relative_to_run(Path(estimate["run_dir"]), out),
        },
        "dominated_by": None if dominator is None else points[dominator].budget,
        "retrained": run_dir is not None,
        "not_retrained": skipped,
    }
    if run_dir is None:
        return row
    metrics = read_metrics(run_dir)
    valid, valid_se = _ndcg(metrics["valid"])
    test, test_se = _ndcg(metrics["test"])
    own, teacher = latency[point.budget], latency["teacher"]
    row.update(
        {
            "run_dir": relative_to_run(run_dir, out),
            "valid_ndcg10": valid,
            "valid_se": valid_se,
            "test_ndcg10": test,
            "test_se": test_se,
            "params": metrics["params"],
            "retrain_seconds": metrics["train_seconds"],
            "latency_ms": own,
            "speedup": {b: round(teacher[b] / own[b], 3) for b in own},
        }
    )
    return row


def _teacher_row(
    teacher: dict[str, Any],
    teacher_dir: Path,
    model: CostModel,
    macs: int,
    latency: dict[str, dict[str, float]],
    out: Path,
) -> dict[str, Any]:
    valid, valid_se = _ndcg(teacher["valid"])
    test, test_se = _ndcg(teacher["test"])
    return {
        "run_dir": relative_to_run(teacher_dir, out),
        "model": teacher["model"],
        "valid_ndcg10": valid,
        "valid_se": valid_se,
        "test_ndcg10": test,
        "test_se": test_se,
        "params": teacher["params"],
        "macs": macs,
        "cost": model.teacher,
        "latency_ms": latency["teacher"],
    }


def _candidate(row: dict[str, Any]) -> Candidate:
    return Candidate(
        name=row["budget"],
        valid=row["valid_ndcg10"],
        cost=row["cost"],
        macs=row["macs"],
        latency_ms=row["latency_ms"].get(SELECT_BATCH),
    )


def front_summary(front: dict[str, Any]) -> list[dict[str, Any]]:
    """report.json's "front": the retrained students, dearest first (issue 27 item 5)."""
    return [
        {
            "budget": r["budget"],
            "speedup": r["speedup"],
            "valid_ndcg10": r["valid_ndcg10"],
            "test_ndcg10": r["test_ndcg10"],
            "macs": r["macs"],
            "run_dir": r["run_dir"],
        }
        for r in front["students"]
        if r["retrained"]
    ]


def front_cost(front: dict[str, Any]) -> dict[str, Any]:
    """What the front added to its search, against one search plus one retraining (the
    selected student's, or the closest's): issue 27's bound, ``front.max_cost``'s measure."""
    seconds = front["seconds"]
    chosen = front["selected"]["name"] or front["selected"]["closest"]
    row = next(r for r in front["students"] if r["budget"] == chosen)
    reference = seconds["search"] + row["retrain_seconds"]
    total = seconds["search"] + seconds["front"]
    return {
        "search_seconds": seconds["search"],
        "front_seconds": seconds["front"],
        "selected_retrain_seconds": row["retrain_seconds"],
        "search_plus_front_over_search_plus_one_retraining": round(total / reference, 3),
    }


def front_not_retrained(front: dict[str, Any]) -> list[dict[str, Any]]:
    """report.json's "front_not_retrained": the sweep's other students, with their cheap
    estimate and why the front did not retrain them (dearest first)."""
    return [
        {
            "budget": r["budget"],
            "macs": r["macs"],
            "estimate_valid_ndcg10": r["estimate"]["valid_ndcg10"],
            "reason": _why_not_retrained(r),
        }
        for r in front["students"]
        if not r["retrained"]
    ]


def _why_not_retrained(row: dict[str, Any]) -> str:
    """A front.json student's reason not to be retrained (front.json files without
    "not_retrained" skipped only the students a cheaper one dominated)."""
    return row.get("not_retrained") or f"{row['dominated_by']} is cheaper and better"


def format_front(front: dict[str, Any]) -> str:
    """A plain-text table of the front and the selection, for the console."""
    batches = list(front["teacher"]["latency_ms"])
    header = (
        f"{'budget':>9}{'MMACs':>9}{'est. valid':>12}{'valid':>9}{'test':>9}"
        + "".join(f"{'x @' + b:>9}" for b in batches)
        + "  retrained"
    )
    lines = [header, "-" * len(header)]
    t = front["teacher"]
    lines.append(
        f"{'teacher':>9}{t['macs'] / 1e6:>9.3f}{'':>12}{t['valid_ndcg10']:>9.4f}"
        f"{t['test_ndcg10']:>9.4f}" + "".join(f"{'1.0':>9}" for _ in batches)
    )
    for r in front["students"]:
        retrained = r["retrained"]
        mark = "*" if r["budget"] == front["selected"]["name"] else " "
        lines.append(
            f"{mark + r['budget']:>9}{r['macs'] / 1e6:>9.3f}"
            f"{r['estimate']['valid_ndcg10']:>12.4f}"
            + (
                f"{r['valid_ndcg10']:>9.4f}{r['test_ndcg10']:>9.4f}"
                if retrained
                else f"{'-':>9}" * 2
            )
            + "".join(f"{r['speedup'][b]:>9.1f}" if retrained else f"{'-':>9}" for b in batches)
            + ("  yes" if retrained else f"  no ({_why_not_retrained(r)})")
        )
    lines.append(f"selected: {front['selected']['reason']}")
    return "\n".join(lines)
