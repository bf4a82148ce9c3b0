"""The one training loop used by every stage: teacher, architecture search, student.

A stage (see ``Stage``) owns its model, optimisers and per-step logic; this loop owns
everything around it: the distributed sampler, epochs, progress bars, evaluation on the
validation split, early stopping, atomic checkpoints, resuming, the training history and
restoring the best weights at the end. The same code runs single-process and under torchrun.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from adarec.config import EvalConfig, LoopConfig
from adarec.errors import UserError
from adarec.evaluate.evaluator import evaluate
from adarec.io import atomic_write_json
from adarec.runtime import distributed as dist
from adarec.runtime.checkpoint import load_checkpoint, save_checkpoint
from adarec.runtime.seed import rng_state, set_rng_state
from adarec.train.shards import rank_sampler

log = logging.getLogger("adarec")

SELECTION_METRIC = "NDCG@10"
# Training seconds of the processes before a resumed one (the loop's own clock restarts).
EARLIER_SECONDS_FILE = "earlier_seconds.json"
# What the training loop's last.pt holds.
LAST_KEYS = (
    "model",
    "stage",
    "rng",
    "history",
    "epoch",
    "best_value",
    "best_epoch",
    "bad_epochs",
    "seconds",
    "best_valid",
    "finished",
)


class Stage(Protocol):
    """What the loop needs from a stage."""

    model: nn.Module  # the unwrapped model that is evaluated and checkpointed

    def on_epoch_start(self, epoch: int) -> dict[str, float]: ...

    def train_step(self, batch: torch.Tensor, epoch: int, step: int) -> dict[str, float]: ...

    def on_epoch_end(self, epoch: int) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, Any] | None
    epochs: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainingContext:
    """Where a stage's training loops run: the same for every loop of one stage.

    ``run_dir`` receives checkpoints/ and history.json (only rank 0 writes); ``valid`` is
    the split evaluated with ``eval_cfg`` after the epochs; ``seed`` shuffles the training
    windows; ``resume`` continues from ``run_dir/checkpoints/last.pt`` when it exists.
    """

    run_dir: Path
    valid: Any  # an EvalSplit
    eval_cfg: EvalConfig
    seed: int
    device: torch.device
    quiet: bool = False
    resume: bool = False


def _loader(dataset: Dataset, batch_size: int, seed: int) -> tuple[DataLoader, Sampler[int]]:
    sampler = rank_sampler(dataset, seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler), sampler


def _selection_value(valid: dict[str, Any]) -> float:
    return float(valid["full"][SELECTION_METRIC])


def run_training(
    stage: Stage,
    loop: LoopConfig,
    train_data: Dataset,
    context: TrainingContext,
    desc: str = "train",
    select_on_valid: bool = True,
) -> TrainResult:
    """Train ``stage`` on ``train_data`` for ``loop.epochs`` epochs with early stopping on
    validation NDCG@10, in ``context`` (run directory, validation, seed, device, resume).

    With ``select_on_valid`` False (e.g. masked-item pretraining) every epoch is kept and the
    last one counts as best. Checkpoints go to ``context.run_dir/checkpoints``.
    """
    run_dir, device, eval_cfg = context.run_dir, context.device, context.eval_cfg
    ckpt_dir = Path(run_dir) / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    loader, sampler = _loader(train_data, loop.batch_size, context.seed)
    # batch_size is per process: every optimiser step averages world_size batches.
    log.info(
        "%s: %d training windows, batch %d per process x %d processes = global batch %d",
        desc,
        len(train_data),
        loop.batch_size,
        dist.world_size(),
        loop.batch_size * dist.world_size(),
    )
    history: list[dict[str, Any]] = []
    start_epoch, best_value, best_epoch, bad_epochs, seconds = 0, -math.inf, -1, 0, 0.0
    best_valid: dict[str, Any] | None = None
    best_state: dict[str, Any] | None = None
    finished = False

    hint = "delete the checkpoints folder to start this stage again"
    if context.resume and last_path.exists():
        state = load_checkpoint(last_path, device, keys=LAST_KEYS, hint=hint)
        try:
            stage.model.load_state_dict(state["model"])
            stage.load_state_dict(state["stage"])
            set_rng_state(_own_rng_state(state["rng"]))
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError):
            raise UserError(f"{last_path} does not fit this stage's model; {hint}") from None
        history = state["history"]
        start_epoch = state["epoch"] + 1
        best_value, best_epoch = state["best_value"], state["best_epoch"]
        bad_epochs, seconds, best_valid = state["bad_epochs"], state["seconds"], state["best_valid"]
        finished = state["finished"]
        if best_path.exists():
            best_state = load_checkpoint(best_path, device, keys=("model",), hint=hint)["model"]
        # start_epoch counts the finished epochs: the 1-based number the epoch lines print.
        log.info("%s: resumed after epoch %d from %s", desc, start_epoch, last_path)
    if dist.is_main():
        atomic_write_json(ckpt_dir / EARLIER_SECONDS_FILE, {"seconds": seconds})

    show = not context.quiet and dist.is_main()
    for epoch in range(start_epoch, 0 if finished else loop.epochs):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        record: dict[str, Any] = {"epoch": epoch, **stage.on_epoch_start(epoch)}
        totals: dict[str, float] = {}
        steps = (
            len(loader)
            if loop.max_steps_per_epoch <= 0
            else min(len(loader), loop.max_steps_per_epoch)
        )
        bar = tqdm(
            total=steps,
            desc=f"{desc} {epoch + 1}/{loop.epochs}",
            disable=not show,
            leave=False,
            dynamic_ncols=True,
        )
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            values = stage.train_step(batch, epoch, step)
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix({k: f"{v:.4f}" for k, v in values.items() if k in ("loss", "ce")})
            bar.update(1)
        bar.close()
        record.update(_mean_over_ranks({k: v / max(steps, 1) for k, v in totals.items()}))
        # Before this epoch is evaluated or saved: the last checkpoint stays the last
        # finite epoch, and no metrics.json marks a diverged stage finished.
        check_finite(desc, epoch, record, stage.model)
        record.update(stage.on_epoch_end(epoch))

        evaluate_now = (epoch + 1) % loop.eval_every == 0 or epoch + 1 == loop.epochs
        improved = False
        if evaluate_now:
            valid = evaluate(
                stage.model,
                context.valid,
                eval_cfg.ks,
                eval_cfg.batch_size,
                device,
                eval_cfg.exclude_seen,
            )
            record["valid"] = valid
            value = _selection_value(valid) if select_on_valid else float(epoch)
            if value > best_value:
                best_value, best_epoch, best_valid, improved = value, epoch, valid, True
                bad_epochs = 0
                best_state = copy.deepcopy(stage.model.state_dict())
            else:
                bad_epochs += 1
        seconds += time.perf_counter() - started
        record["seconds"] = seconds
        history.append(record)
        _log_epoch(desc, record, loop.epochs)

        stop = select_on_valid and loop.patience > 0 and bad_epochs >= loop.patience
        # Each rank has its own generators (dropout masks): all are saved, each resumes its own.
        rng_states = dist.all_gather_objects(rng_state())
        if dist.is_main():
            if improved:
                save_checkpoint(best_path, {"model": best_state, "epoch": epoch})
            save_checkpoint(
                last_path,
                {
                    "model": stage.model.state_dict(),
                    "stage": stage.state_dict(),
                    "rng": rng_states,
                    "history": history,
                    "epoch": epoch,
                    "best_value": best_value,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "seconds": seconds,
                    "best_valid": best_valid,
                    "finished": stop,
                },
            )
            atomic_write_json(Path(run_dir) / "history.json", history)
        dist.barrier()
        if stop:
            log.info(
                "%s: early stop after epoch %d (best epoch %d)", desc, epoch + 1, best_epoch + 1
            )
            break

    if best_state is not None:
        stage.model.load_state_dict(best_state)
    return TrainResult(best_epoch + 1, best_valid, len(history), seconds, history)


def check_finite(desc: str, epoch: int, record: dict[str, Any], model: nn.Module) -> None:
    """UserError if an epoch's mean losses (the same on every rank) or the model's weights
    are not finite: training diverged, and its metrics would read 0 as if it had finished."""
    bad = {
        key: value
        for key, value in record.items()
        if isinstance(value, float) and not math.isfinite(value)
    }
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if not bad and not broken:
        return
    parts = [f"{key} {value}" for key, value in bad.items()]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        parts.append(f"weights {broken[0]}{more}")
    what = ", ".join(parts)
    raise UserError(
        f"{desc}: training diverged in epoch {epoch + 1} (not finite: {what}); the stage "
        "stopped before saving that epoch and is not marked finished. Train it again with a "
        "lower learning rate or gradient clipping (remove the run's checkpoints folder, or "
        "choose another --out); --resume continues from the last finite epoch"
    )


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each epoch-mean value averaged over the ranks, so the history covers the global batch."""
    per_rank = dist.all_gather_objects(values)
    return {k: sum(r[k] for r in per_rank) / len(per_rank) for k in values}


def _own_rng_state(states: list[dict[str, Any]]) -> dict[str, Any]:
    """This rank's saved RNG state (rank 0's when resuming on more processes than saved)."""
    return states[dist.rank()] if dist.rank() < len(states) else states[0]


def _log_epoch(desc: str, record: dict[str, Any], epochs: int) -> None:
    parts = [f"{desc} epoch {record['epoch'] + 1}/{epochs}"]
    for key, value in record.items():
        if key in ("epoch", "valid", "seconds") or not isinstance(value, int | float):
            continue
        parts.append(f"{key} {value:.4f}")
    if "valid" in record:
        full, sampled = record["valid"]["full"], record["valid"]["sampled"]
        parts.append(
            f"valid NDCG@10 {full['NDCG@10']:.4f} HR@10 {full['HR@10']:.4f}"
            f" (sampled NDCG@10 {sampled['NDCG@10']:.4f})"
        )
    parts.append(f"{record['seconds']:.0f}s")
    log.info(" | ".join(parts))
