"""Optimisers and learning-rate schedules from a LoopConfig."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from adarec.config import LoopConfig


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    cfg: LoopConfig,
    lr: float | None = None,
    weight_decay: float | None = None,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """Adam or AdamW; ``fused``: torch's one-kernel update (the same step, rounded
    differently: about 1e-7), for the sampled softmax, whose steps at a large catalogue
    are otherwise mostly the optimizer's pass over the N x d catalogue rows (1M items x
    96: 3.6 s per step unfused, 0.34 s fused, one CPU thread)."""
    lr = cfg.lr if lr is None else lr
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(list(params), lr=lr, weight_decay=wd, fused=fused or None)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: LoopConfig):
    """Step decay every ``lr_step`` epochs (None when disabled)."""
    if cfg.lr_step <= 0 or cfg.lr_decay == 1.0:
        return None
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_decay)
