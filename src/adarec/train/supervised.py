"""The supervised stage: next-item (or masked-item) cross-entropy on training windows.

Used for the teachers and for retraining a derived student with cross-entropy only.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from adarec.config import LoopConfig
from adarec.models.base import CandidateScores, SeqOutput
from adarec.runtime import distributed as dist
from adarec.train.losses import next_item_loss, target_mask
from adarec.train.optim import make_optimizer, make_scheduler
from adarec.train.sampled import NegativeSampler, candidate_scores, sampled_next_item_loss


class WithLogits(nn.Module):
    """Runs forward and the output layer (over the real items: ``item_logits``) inside one
    ``forward``.

    DistributedDataParallel only tracks parameters used inside the wrapped module's
    forward, so the output layer must be applied there too.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        items: torch.Tensor,
        targets: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
    ) -> tuple[SeqOutput, torch.Tensor | CandidateScores]:
        """Full logits over the items [B, L, N]; with ``negatives`` (sampled softmax) the
        scores of the real positions (``targets`` > 0) on their candidates instead."""
        out = self.model(items)
        if negatives is None:
            return out, self.model.item_logits(out.output)
        mask = target_mask(targets)
        return out, candidate_scores(self.model, out.output[mask], targets[mask], negatives)


def wrap_ddp(module: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
    """Wrap in DistributedDataParallel when running under torchrun, else return as is."""
    if dist.world_size() == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when mixed precision is on; a no-op otherwise."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class SupervisedStage:
    """Cross-entropy training of one model; ``make_batch`` turns a window into (inputs, targets).

    The default batch maker is next-item prediction: inputs ``w[:, :-1]``, targets ``w[:, 1:]``.
    With a ``sampler`` the cross-entropy is the sampled softmax (``adarec.train.sampled``).
    """

    def __init__(
        self,
        model: nn.Module,
        loop: LoopConfig,
        device: torch.device,
        amp: bool = False,
        make_batch: Any = None,
        sampler: NegativeSampler | None = None,
    ):
        self.model = model.to(device)
        self.sampler = None if sampler is None else sampler.to(device)
        self.device, self.loop, self.amp = device, loop, amp
        self.net = wrap_ddp(WithLogits(self.model), device)
        # Fused only with the sampled softmax: full-softmax runs keep their exact numbers.
        self.optimizer = make_optimizer(self.model.parameters(), loop, fused=sampler is not None)
        self.scheduler = make_scheduler(self.optimizer, loop)
        self.make_batch = make_batch or next_item_batch

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        return {"lr": self.optimizer.param_groups[0]["lr"]}

    def train_step(self, batch: torch.Tensor, epoch: int, step: int) -> dict[str, float]:
        self.net.train()
        inputs, targets = self.make_batch(batch.to(self.device), epoch, step)
        if self.sampler is None:
            with autocast(self.device, self.amp):
                _, logits = self.net(inputs)
            loss = next_item_loss(logits, targets)
        else:
            negatives = self.sampler.draw()
            with autocast(self.device, self.amp):
                _, scores = self.net(inputs, targets, negatives)
            real = targets[target_mask(targets)]
            loss = sampled_next_item_loss(scores, real, negatives, self.sampler)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.loop.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.loop.clip_grad)
        self.optimizer.step()
        return {"loss": loss.item()}

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        if self.scheduler is not None:
            self.scheduler.step()
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def next_item_batch(
    window: torch.Tensor, epoch: int, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs are the window without its last item, targets the window shifted by one.

    The first item of a window is never a target: its input position is padding, so there
    is nothing to predict it from (as in SASRec's own training).
    """
    inputs = window[:, :-1]
    return inputs, window[:, 1:] * (inputs > 0)
