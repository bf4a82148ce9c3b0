"""Train and evaluate a teacher (NextItNet, SASRec, BERT4Rec) or the popularity baseline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from adarec.config import Config
from adarec.data.splits import item_counts
from adarec.errors import UserError
from adarec.models.bert4rec import BERT4Rec, mask_items
from adarec.pipeline.stage import StageRun
from adarec.registry import build_model
from adarec.runtime import distributed as dist
from adarec.runtime.checkpoint import load_checkpoint
from adarec.train.supervised import SupervisedStage

log = logging.getLogger("adarec")

PHASES = ("all", "pretrain", "finetune")


def train_teacher(
    cfg: Config, run_dir: Path, quiet: bool = False, resume: bool = False, phase: str = "all"
) -> dict[str, Any]:
    """Train the teacher described by ``cfg.model`` and write its run directory."""
    if phase not in PHASES:
        raise UserError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    if phase != "all" and cfg.model.name != "bert4rec":
        raise UserError(
            f"--phase {phase} is for bert4rec (masked-item pretraining, then causal "
            f"fine-tuning); {cfg.model.name} trains in one phase: drop --phase"
        )
    run = StageRun(cfg, run_dir, resume, quiet)
    model = build_model(cfg.model, run.data.data.num_items, cfg.data.max_len)
    if cfg.model.name == "pop":
        model.fit(item_counts(run.data.data))
        return run.finish(model, cfg.model.name, cfg.model.name)
    if cfg.model.name == "bert4rec":
        _pretrain_bert4rec(model, cfg, run, run_pretrain=phase in ("all", "pretrain"))
        if phase == "pretrain":
            log.info("pretraining done; fine-tune with --phase finetune --resume")
            return {}
        model.causal = True
    stage = SupervisedStage(model, cfg.train, run.device, cfg.amp, sampler=run.sampler())
    run.train(stage, cfg.train, cfg.model.name)
    return run.finish(model, cfg.model.name, cfg.model.name)


def _pretrain_bert4rec(model: BERT4Rec, cfg: Config, run: StageRun, run_pretrain: bool) -> None:
    """Masked-item pretraining (bidirectional) in ``run_dir/pretrain``."""
    pre_dir = run.run_dir / "pretrain"
    model.causal = False
    if not run_pretrain:
        # Fine-tuning alone starts from an earlier pretraining of this run directory.
        best = pre_dir / "checkpoints" / "best.pt"
        if best.exists():
            hint = "pretrain again with --phase pretrain (or --phase all)"
            weights = load_checkpoint(best, run.device, keys=("model",), hint=hint)["model"]
            try:
                model.load_state_dict(weights)
            except RuntimeError:
                raise UserError(f"{best} does not fit this model; {hint}") from None
        else:
            log.info("no pretraining found in %s; fine-tuning from scratch", pre_dir)
        return
    mask_token = model.num_items + 1

    def masked_batch(window: torch.Tensor, epoch: int, step: int):
        # A generator per (seed, epoch, step): the masks are reproducible and survive --resume,
        # and differ across ranks because each rank sees other windows.
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + step)
        items = window[:, 1:]
        inputs, labels = mask_items(
            items.cpu(), cfg.model.mask_prob, mask_token, model.num_items, generator
        )
        return inputs.to(window.device), labels.to(window.device)

    stage = SupervisedStage(
        model, cfg.train, run.device, cfg.amp, make_batch=masked_batch, sampler=run.sampler()
    )
    loop = type(cfg.train)(
        **{**cfg.train.__dict__, "epochs": cfg.model.pretrain_epochs, "patience": 0}
    )
    if dist.is_main():
        pre_dir.mkdir(parents=True, exist_ok=True)
    run.train(stage, loop, "bert4rec-pretrain", run_dir=pre_dir)
