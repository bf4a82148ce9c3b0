"""Train and evaluate a teacher (NextItNet, SASRec, BERT4Rec) or the popularity baseline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from adarec.config import Config
from adarec.data.splits import item_counts
from adarec.errors import UserError
from adarec.models.bert4rec import mask_items
from adarec.pipeline.common import (
    StageData,
    Timer,
    final_metrics,
    load_stage_data,
    start_run,
    write_data_files,
    write_metrics,
)
from adarec.plots import plot_training_curves
from adarec.registry import build_model
from adarec.runs import save_model
from adarec.runtime import distributed as dist
from adarec.train.loop import run_training
from adarec.train.supervised import SupervisedStage

log = logging.getLogger("adarec")

PHASES = ("all", "pretrain", "finetune")


def train_teacher(
    cfg: Config, run_dir: Path, quiet: bool = False, resume: bool = False, phase: str = "all"
) -> dict[str, Any]:
    """Train the teacher described by ``cfg.model`` and write its run directory."""
    run_dir = Path(run_dir)
    device = start_run(cfg, run_dir, resume, quiet)
    stage_data = load_stage_data(cfg, quiet)
    write_data_files(run_dir, stage_data.data)
    timer = Timer()
    num_items, max_len = stage_data.data.num_items, cfg.data.max_len

    if cfg.model.name == "pop":
        model = build_model(cfg.model, num_items, max_len)
        model.fit(item_counts(stage_data.data))
        epochs = 0
    else:
        model = build_model(cfg.model, num_items, max_len)
        epochs = 0
        if cfg.model.name == "bert4rec":
            epochs += _pretrain_bert4rec(
                model,
                cfg,
                stage_data,
                run_dir,
                device,
                quiet,
                resume,
                run_pretrain=phase in ("all", "pretrain"),
            )
            if phase == "pretrain":
                log.info("pretraining done; fine-tune with --phase finetune --resume")
                return {}
            model.causal = True
        stage = SupervisedStage(model, cfg.train, device, cfg.amp)
        result = run_training(
            stage,
            stage_data.train,
            stage_data.valid,
            cfg.train,
            cfg.eval,
            run_dir,
            cfg.seed,
            device,
            quiet,
            resume,
            desc=cfg.model.name,
        )
        epochs += result.epochs
        plot_training_curves(result.history, run_dir / "curves.png", cfg.model.name)

    model.to(device)
    save_model(run_dir, model)
    metrics = final_metrics(model, cfg, stage_data, device, cfg.model.name, timer.seconds(), epochs)
    write_metrics(run_dir, metrics)
    return metrics


def _pretrain_bert4rec(
    model: torch.nn.Module,
    cfg: Config,
    stage_data: StageData,
    run_dir: Path,
    device: torch.device,
    quiet: bool,
    resume: bool,
    run_pretrain: bool,
) -> int:
    """Masked-item pretraining (bidirectional) in ``run_dir/pretrain``; returns its epochs."""
    pre_dir = run_dir / "pretrain"
    model.causal = False
    if not run_pretrain:
        # Fine-tuning alone starts from an earlier pretraining of this run directory.
        from adarec.runtime.checkpoint import load_checkpoint

        best = pre_dir / "checkpoints" / "best.pt"
        if best.exists():
            hint = "pretrain again with --phase pretrain (or --phase all)"
            weights = load_checkpoint(best, device, keys=("model",), hint=hint)["model"]
            try:
                model.load_state_dict(weights)
            except RuntimeError:
                raise UserError(f"{best} does not fit this model; {hint}") from None
        else:
            log.info("no pretraining found in %s; fine-tuning from scratch", pre_dir)
        return 0
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

    stage = SupervisedStage(model, cfg.train, device, cfg.amp, make_batch=masked_batch)
    loop = type(cfg.train)(
        **{**cfg.train.__dict__, "epochs": cfg.model.pretrain_epochs, "patience": 0}
    )
    if dist.is_main():
        pre_dir.mkdir(parents=True, exist_ok=True)
    result = run_training(
        stage,
        stage_data.train,
        stage_data.valid,
        loop,
        cfg.eval,
        pre_dir,
        cfg.seed,
        device,
        quiet,
        resume,
        desc="bert4rec-pretrain",
    )
    return result.epochs
