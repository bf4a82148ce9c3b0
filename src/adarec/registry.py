"""The one table from model names to classes: build a teacher from its config, and rebuild
any model (teacher, supernet, student) from the spec its model file keeps.

A spec names its class by ``kind``, and a teacher's spec by its model name as well
(``{"kind": "teacher", "model": {"name": "sasrec", ...}}``); each class reads and writes
its own spec (``to_spec`` / ``from_spec``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

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
    cls = MODELS[cfg.name]
    require_memory(lambda: cls.from_config(cfg, num_items, max_len), f"model {cfg.name!r}")
    return cls.from_config(cfg, num_items, max_len)


# Training holds each weight about four times: itself, its gradient, Adam's two moments.
TRAINING_COPIES = 4


def require_memory(build: Callable[[], nn.Module], what: str) -> None:
    """UserError if the model ``build`` makes cannot be trained in this machine's memory.

    ``build`` runs on the meta device first (shapes without memory): an absurd size
    (``model.hidden_size=1000000000``) is refused before any allocation, where it was an
    allocation failure or a process killed for memory.
    """
    advice = "choose a smaller model (model.hidden_size, inner_size, num_blocks)"
    try:
        with torch.device("meta"):
            model = build()
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            raise
        raise UserError(f"the {what} of this config is too large to exist; {advice}") from None
    tensors = itertools.chain(model.parameters(), model.buffers())
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if TRAINING_COPIES * nbytes > memory:
        raise UserError(
            f"the {what} of this config holds {nbytes / 2**30:,.1f} GiB of weights; training "
            f"needs about {TRAINING_COPIES}x that, more than this machine's "
            f"{memory / 2**30:,.1f} GiB of memory; {advice}"
        )


def model_from_spec(spec: dict[str, Any]) -> SequentialRecommender:
    """An untrained model of the architecture that ``spec`` describes."""
    name = spec["model"]["name"] if spec["kind"] == "teacher" else spec["kind"]
    if name not in MODELS:
        raise UserError(f"unknown model {name!r} in model file")
    return MODELS[name].from_spec(spec)
