"""The whole AdaRec pipeline: teacher, search, derivation, retraining, baselines, report.

Layout of ``adarec run --out RUN_DIR`` (a contract other tools read):
``teacher/``, ``search/``, ``student/``, ``baselines/NAME/``, ``report.md``, ``report.json``.
Each stage is skipped when its ``metrics.json`` exists and resumed when it was interrupted.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adarec.config import Config
from adarec.errors import UserError
from adarec.nas.budget import random_genotype_within_budget
from adarec.nas.genotype import random_genotype
from adarec.pipeline.common import SEARCH_KEYS, STUDENT_KEYS, TEACHER_KEYS, check_reusable
from adarec.pipeline.preflight import check_budget_before_teacher
from adarec.pipeline.search import run_search
from adarec.pipeline.student import run_student
from adarec.pipeline.teacher import train_teacher
from adarec.runs import read_metrics
from adarec.runtime.logs import setup_logging

log = logging.getLogger("adarec")

BASELINES = (
    "pop",
    "small_kd",
    "no_kd",
    "random_arch",
    "random_arch_budget",
    "fixed_mapping",
    "no_cost",
)
# The comparisons derived at the student's budget: with the front, its selected one's.
SELECTED_CELL_BASELINES = ("no_kd", "random_arch_budget", "fixed_mapping")
SMALL_STUDENTS = {
    # METHOD.md section 5: hand-designed small students of the teacher's family.
    "nextitnet": {"hidden_size": 64, "num_blocks": 8, "dilations": [1, 4]},
    "sasrec": {"hidden_size": 32, "num_heads": 1, "num_blocks": 4, "inner_size": 128},
    "bert4rec": {"hidden_size": 32, "num_heads": 1, "num_blocks": 4, "inner_size": 128},
}


def _stage(
    run_dir: Path,
    cfg: Config,
    make: Callable[[], dict[str, Any]],
    keys: tuple[str, ...] = STUDENT_KEYS,
    teacher_dir: Path | None = None,
) -> dict[str, Any]:
    """Reuse a finished stage when it ran with ``cfg``'s settings (``keys``) on the same
    data (``check_reusable``: else one error naming what differs); otherwise run (or
    resume) it."""
    if (run_dir / "metrics.json").exists():
        check_reusable(run_dir, cfg, keys, teacher_dir)
        log.info("reusing finished stage %s", run_dir)
        return read_metrics(run_dir)
    return make()


def run_pipeline(
    cfg: Config,
    out: Path,
    teacher_dir: Path | None = None,
    baselines: list[str] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run every stage into ``out`` and write ``report.md`` / ``report.json``."""
    from adarec.pipeline.report import write_report

    out = Path(out)
    no_front = front_unavailable(cfg)
    if cfg.run.front and no_front and cfg.run.select_budget:
        raise UserError(
            f"run.select_budget {cfg.run.select_budget!r} selects from the front, but {no_front}"
        )
    if cfg.run.front and cfg.student.budget:
        raise UserError(
            f"student.budget {cfg.student.budget!r} derives one student, but adarec run "
            "selects its student from the front (run.front): give the budget as --budget "
            "(run.select_budget), or set run.front=false"
        )
    baselines = list(cfg.run.baselines if baselines is None else baselines)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise UserError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
    if teacher_dir is None:
        teacher_dir = out / "teacher"
        if not (teacher_dir / "metrics.json").exists():
            # A budget the search would refuse is refused before the teacher trains.
            check_budget_before_teacher(cfg)
        _stage(teacher_dir, cfg, lambda: train_teacher(cfg, teacher_dir, quiet, True), TEACHER_KEYS)
    elif not (Path(teacher_dir) / "metrics.json").exists():
        raise UserError(f"--teacher {teacher_dir} is not a finished teacher run")
    teacher_dir = Path(teacher_dir)
    search_dir, student_dir = out / "search", out / "student"
    _stage(
        search_dir,
        cfg,
        lambda: run_search(cfg, search_dir, teacher_dir, quiet, resume=True),
        SEARCH_KEYS,
        teacher_dir,
    )
    front = None
    selected_budget = ""
    if cfg.run.front and no_front:
        log.info("no front: %s; the student is the search's own derivation", no_front)
    if cfg.run.front and not no_front:
        from adarec.pipeline.front import build_front, install_selected

        # The front's students are retrained once; the selected one becomes student/.
        front = build_front(cfg, search_dir, out / "front", quiet)
        selected_budget = install_selected(front, out / "front", student_dir)
    else:
        _stage(student_dir, cfg, lambda: run_student(cfg, student_dir, search_dir, quiet, True))
    baseline_dirs: dict[str, Path] = {}
    for name in baselines:
        baseline_dirs.update(
            run_baseline(
                name, cfg, out / "baselines", teacher_dir, search_dir, quiet, selected_budget
            )
        )
    setup_logging(out, quiet)
    return write_report(
        cfg,
        out,
        teacher_dir,
        search_dir,
        student_dir,
        baseline_dirs,
        front=front,
        front_skipped=no_front if cfg.run.front else None,
    )


def front_unavailable(cfg: Config) -> str | None:
    """Why the search of ``cfg`` can have no front (None when it can): the front derives
    students under budgets from the search's cost model, which only a budgeted search has."""
    if not cfg.search.use_cost:
        return (
            "search.use_cost is false: the search has no budget (no cost model) to derive "
            "students under"
        )
    if cfg.search.cost_form == "paper":
        return (
            "search.cost_form is paper (beta x the cost table, no budget): the search has no "
            "budget to derive students under"
        )
    return None


def run_baseline(
    name: str,
    cfg: Config,
    root: Path,
    teacher_dir: Path,
    search_dir: Path,
    quiet: bool,
    selected_budget: str = "",
) -> dict[str, Path]:
    """Train a comparison on the same data and teacher; returns {row name: run directory}
    (one row, or one per random cell for random_arch_budget). ``selected_budget``: the
    front's selected student's budget, which the derived-cell comparisons then take."""
    variant = copy.deepcopy(cfg)
    if selected_budget and name in SELECTED_CELL_BASELINES:
        variant.student.budget = selected_budget
        # One folder per selected cell: asking again with another keep or budget trains
        # the comparison of the new cell beside the old one instead of refusing it.
        root = root / f"at-{selected_budget}"
    run_dir = root / name
    if name == "random_arch_budget":
        return _random_within_budget(variant, root, search_dir, quiet)
    if name == "pop":
        variant.model.name = "pop"
        _stage(run_dir, variant, lambda: train_teacher(variant, run_dir, quiet, True), TEACHER_KEYS)
    elif name == "small_kd":
        _small_kd(variant, run_dir, teacher_dir, search_dir, quiet)
    elif name == "no_kd":
        # The derived architecture trained without distillation, from scratch.
        scratch_loop(variant)
        variant.student.init, variant.student.loss = "scratch", "ce"
        _stage(
            run_dir,
            variant,
            lambda: run_student(variant, run_dir, search_dir, quiet, True, name="no_kd"),
        )
    elif name == "random_arch":
        s = cfg.search
        genotype = random_genotype(s.ops, s.nodes, s.cells, s.width, seed=cfg.seed)
        _stage(
            run_dir,
            variant,
            lambda: run_student(
                variant, run_dir, search_dir, quiet, True, genotype=genotype, name="random_arch"
            ),
        )
    elif name in ("fixed_mapping", "no_cost"):
        if name == "fixed_mapping":
            variant.distill.layer_mapping = "skip"
        else:
            # No cost term in any cost form (beta weighs only the paper's), and no budget:
            # the student is the search's own derivation, not one re-derived under a cost.
            variant.search.use_cost = False
            variant.student.budget = ""
        variant_search = run_dir / "search"
        _stage(
            variant_search,
            variant,
            lambda: run_search(variant, variant_search, teacher_dir, quiet, resume=True),
            SEARCH_KEYS,
            teacher_dir,
        )
        _stage(
            run_dir,
            variant,
            lambda: run_student(variant, run_dir, variant_search, quiet, True, name=name),
        )
    return {name: run_dir}


def _random_within_budget(
    cfg: Config, root: Path, search_dir: Path, quiet: bool
) -> dict[str, Path]:
    """``run.random_cells`` random cells under the student's budget (``student.budget``, or
    the search's), retrained like the student."""
    from adarec.pipeline.student import cost_model_of_search, rederived_cost_model

    if cfg.student.budget:
        model = rederived_cost_model(search_dir, cfg.student.budget)
    else:
        model = cost_model_of_search(search_dir)
    s = cfg.search
    dirs = {}
    for k in range(cfg.run.random_cells):
        name = f"random_arch_budget_{k}"
        genotype = random_genotype_within_budget(
            model, s.ops, s.nodes, s.cells, s.width, seed=cfg.seed + k
        )
        run_dir = root / "random_arch_budget" / f"cell_{k}"
        variant = copy.deepcopy(cfg)
        _stage(
            run_dir,
            variant,
            lambda v=variant, d=run_dir, g=genotype, n=name: run_student(
                v, d, search_dir, quiet, True, genotype=g, name=n
            ),
        )
        dirs[name] = run_dir
    return dirs


def _small_kd(cfg: Config, run_dir: Path, teacher_dir: Path, search_dir: Path, quiet: bool) -> None:
    """A hand-designed small model of the teacher's family trained with standard KD."""
    from adarec.pipeline.distill_baseline import train_small_kd

    family = read_metrics(teacher_dir)["model"]
    if family not in SMALL_STUDENTS:
        raise UserError(f"no hand-designed small student for teacher {family!r}")
    for key, value in SMALL_STUDENTS[family].items():
        setattr(cfg.model, key, value)
    cfg.model.name = family
    _stage(run_dir, cfg, lambda: train_small_kd(cfg, run_dir, teacher_dir, quiet))


def scratch_loop(cfg: Config) -> None:
    """Models trained from scratch use the teacher's loop settings (lr, epochs, patience)."""
    for key, value in vars(cfg.train).items():
        setattr(cfg.student, key, value)
