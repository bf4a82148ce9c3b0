"""The one table from model names to classes: build a teacher from its config, and rebuild
any model (teacher, supernet, student) from the spec its model file keeps.

A spec names its class by ``kind``, and a teacher's spec by its model name as well
(``{"kind": "teacher", "model": {"name": "sasrec", ...}}``); each class reads and writes
its own spec (``to_spec`` / ``from_spec``).
"""

from __future__ import annotations

from typing import Any

from adarec.config import ModelConfig
from adarec.errors import UserError
from adarec.models.base import SequentialRecommender, Teacher
from adarec.models.bert4rec import BERT4Rec
from adarec.models.nextitnet import NextItNet
from adarec.models.pop import Popularity
from adarec.models.sasrec import SASRec
from adarec.nas.student import Student
from adarec.nas.supernet import Supernet

MODELS: dict[str, type[SequentialRecommender]] = {
    "nextitnet": NextItNet,
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
    "pop": Popularity,
    "supernet": Supernet,
    "student": Student,
}
TEACHERS = tuple(name for name, cls in MODELS.items() if issubclass(cls, Teacher))


def build_model(cfg: ModelConfig, num_items: int, max_len: int) -> Teacher:
    """An untrained model named by ``cfg.name`` (nextitnet | sasrec | bert4rec | pop)."""
    if cfg.name not in TEACHERS:
        raise UserError(f"unknown model {cfg.name!r}; choose {', '.join(TEACHERS)}")
    if cfg.name != "pop" and not 1 <= cfg.distill_every <= cfg.num_blocks:
        raise UserError(
            f"config key 'model.distill_every' must be between 1 and model.num_blocks "
            f"({cfg.num_blocks}); got {cfg.distill_every}"
        )
    return MODELS[cfg.name].from_config(cfg, num_items, max_len)


def model_from_spec(spec: dict[str, Any]) -> SequentialRecommender:
    """An untrained model of the architecture that ``spec`` describes."""
    name = spec["model"]["name"] if spec["kind"] == "teacher" else spec["kind"]
    if name not in MODELS:
        raise UserError(f"unknown model {name!r} in model file")
    return MODELS[name].from_spec(spec)
