"""Checks ``adarec run`` makes before the teacher trains, so that a budget the search would
refuse is refused before hours of teacher training rather than after them."""

from __future__ import annotations

import logging

from adarec.config import Config, parse_budget
from adarec.data.preprocess import prepare
from adarec.nas.budget import cost_unit, format_cost
from adarec.nas.costs import STUDENT_BUDGET, STUDENT_BUDGET_ADVICE, search_cost_model
from adarec.nas.operations import OP_SETS
from adarec.nas.profile import op_cost_stats
from adarec.registry import build_model
from adarec.runtime.distributed import resolve_device

log = logging.getLogger("adarec")


def check_budget_before_teacher(cfg: Config) -> None:
    """UserError if the search's budget (or ``student.budget``) is one the search would
    refuse: below the cheapest student of the space, or, in MACs, not below the teacher.

    Both units are checked on the untrained teacher of ``cfg.model``: its MACs are exactly
    the trained one's (they depend on the architecture alone), and so, up to timing noise,
    is its latency (the same graph, on the device the run will use). The search checks a
    budget in milliseconds again when it times the trained teacher.
    """
    s = cfg.search
    if not s.use_cost or s.cost_form == "paper" or cfg.model.name == "pop":
        return  # no cost model (or no teacher to distil): the search says so itself
    # The teacher stage prepares the same data next (from the cache this fills).
    num_items = prepare(cfg.data, cfg.seed).num_items
    teacher = build_model(cfg.model, num_items, cfg.data.max_len)
    if cost_unit(parse_budget(s.budget), s.cost) == "ms":
        teacher = teacher.to(resolve_device(cfg.device)).eval()  # timed where it will run
    stats = op_cost_stats(OP_SETS[s.ops], s.width, cfg.data.max_len, s.ops)
    model = search_cost_model(cfg, num_items, teacher, stats)
    if cfg.student.budget:
        rederived = model.with_speedup(cfg.student.budget, STUDENT_BUDGET)
        rederived.require_reachable(s.nodes, STUDENT_BUDGET, STUDENT_BUDGET_ADVICE)
    log.info(
        "budget %s: %s per history, teacher %s (checked before training)",
        model.budget,
        format_cost(model.target, model.unit),
        format_cost(model.teacher, model.unit) if model.teacher is not None else "-",
    )
