"""The distillation stage: architecture search (AdaRec) and distillation-guided retraining.

One step computes the distillation objective
``L = (1 - gamma) CE + gamma (L_emb + L_hid + L_logit)`` on a training batch, with the
frozen teacher under no_grad in eval mode. In search mode the student is the supernet and
an ``Architect`` (``adarec.nas.architect``) owns alpha: it samples the step's architecture
(the same on every rank), adds the cost term and steps alpha, either on the same batch
(single-level, the paper) or on held-out training windows (first-order bi-level).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adarec.config import DistillConfig, LoopConfig
from adarec.distill.emd import EMDLayerMapper
from adarec.distill.losses import (
    candidate_kd_loss,
    embedding_loss,
    fixed_mapping_loss,
    hidden_distance_matrix,
    logit_kd_loss,
)
from adarec.nas.architect import Architect
from adarec.nas.supernet import Supernet
from adarec.train.losses import next_item_loss, target_mask
from adarec.train.optim import make_optimizer, make_scheduler
from adarec.train.sampled import (
    NegativeSampler,
    candidate_scores,
    corrected_logits,
    sampled_next_item_loss,
)
from adarec.train.shards import rank_sampler
from adarec.train.supervised import autocast, next_item_batch, wrap_ddp


class StudentWithProjections(nn.Module):
    """Student plus the linear maps C_s -> C_t used by the embedding and hidden-layer losses.

    Everything trainable runs inside this module's forward, as DistributedDataParallel needs.
    A projection whose loss is switched off is not built (``None`` in its output slot):
    DistributedDataParallel fails on parameters that produce an output the loss never uses.
    """

    def __init__(
        self,
        student: nn.Module,
        student_width: int,
        teacher_width: int,
        embedding: bool = True,
        hidden: bool = True,
    ):
        super().__init__()
        self.student = student
        self.embedding_proj = nn.Linear(student_width, teacher_width) if embedding else None
        self.hidden_proj = nn.Linear(student_width, teacher_width) if hidden else None

    def forward(
        self,
        items: torch.Tensor,
        weights: list[torch.Tensor] | None = None,
        targets: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
    ):
        """Full logits [B, L, N], or with ``negatives`` (sampled softmax) the scores of the
        real positions (``targets`` > 0) on their candidates."""
        out = self.student(items, weights) if weights is not None else self.student(items)
        if negatives is None:
            logits = self.student.item_logits(out.output)
        else:
            mask = target_mask(targets)
            logits = self.student.candidate_scores(out.output[mask], targets[mask], negatives)
        embedding, hidden = None, None
        if self.embedding_proj is not None:
            embedding = self.embedding_proj(out.embedding)
        if self.hidden_proj is not None:
            hidden = [self.hidden_proj(h) for h in out.hidden_states]
        return out, logits, embedding, hidden


class DistillStage:
    """Search (``search=True``, student is a Supernet) or retrain a fixed student with KD."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        distill: DistillConfig,
        loop: LoopConfig,
        device: torch.device,
        seed: int,
        architect: Architect | None = None,
        held_out: Dataset | None = None,
        amp: bool = False,
        sampler: NegativeSampler | None = None,
    ):
        self.cfg, self.loop, self.device, self.seed, self.amp = distill, loop, device, seed, amp
        # None: every loss over the whole catalogue; else the sampled softmax (train.sampled).
        self.sampler = None if sampler is None else sampler.to(device)
        self.architect = architect
        self.search = architect is not None
        # First-order bi-level: alpha steps on held-out windows (the search's setting).
        self.bilevel = self.search and architect.cfg.optimization == "bilevel"
        self.model = student.to(device)
        self.teacher = teacher.to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.kd = StudentWithProjections(
            self.model,
            self.model.hidden_size,
            self.teacher.hidden_size,
            embedding=distill.use_emb,
            hidden=distill.use_hid,
        ).to(device)
        # single_path leaves the ops that were not sampled without gradients.
        self.net = wrap_ddp(self.kd, device, find_unused=self.search)
        if architect is not None:
            architect.remember_initial()  # the values every rank now shares
        alpha_ids = {id(p) for p in self._alphas()}
        weights = [p for p in self.kd.parameters() if id(p) not in alpha_ids]
        # Fused only with the sampled softmax: full-softmax runs keep their exact numbers.
        self.optimizer = make_optimizer(weights, loop, fused=sampler is not None)
        self.scheduler = make_scheduler(self.optimizer, loop)
        self.mapper = EMDLayerMapper(
            self._layer_count(self.model),
            self._layer_count(self.teacher),
            distance=distill.hid_distance,
        ).to(device)
        self.held_out_iter = None
        self.held_out_loader: DataLoader | None = None
        if self.bilevel:
            if held_out is None or len(held_out) == 0:
                raise ValueError("bi-level search needs held-out training windows")
            sampler = rank_sampler(held_out, seed + 1)
            self.held_out_sampler = sampler
            self.held_out_loader = DataLoader(held_out, batch_size=loop.batch_size, sampler=sampler)
        self.epoch_gamma = distill.gamma

    # -- helpers ---------------------------------------------------------------------------
    def _alphas(self) -> list[nn.Parameter]:
        return list(self.model.arch_parameters()) if isinstance(self.model, Supernet) else []

    def _layer_count(self, model: nn.Module) -> int:
        """How many hidden states a model exposes for distillation (one probe forward)."""
        # The student's window: both models see the same inputs (a user's teacher need not
        # say its max_len).
        probe = torch.zeros(1, self.model.max_len, dtype=torch.long, device=self.device)
        probe[0, -1] = 1
        was_training = model.training
        model.eval()
        with torch.no_grad():
            count = len(model(probe).hidden_states)
        model.train(was_training)
        return count

    def loss_terms(
        self, inputs: torch.Tensor, targets: torch.Tensor, weights: list[torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        """Each loss term of the objective (only the switched-on ones), unweighted."""
        cfg = self.cfg
        mask = target_mask(targets)
        sampler = self.sampler
        # Sampled softmax: one draw of negatives serves the student's CE and the KD term,
        # so the teacher is matched on the very candidates the student is scored on.
        negatives = None if sampler is None else sampler.draw()
        real = targets[mask]
        with torch.no_grad():
            t_out = self.teacher(inputs)
            t_logits = None
            if cfg.use_logit and sampler is None:
                # A teacher of the user's own provides ``logits`` only (TeacherProtocol).
                t_logits = self.teacher.logits(t_out.output)[..., 1:]
            elif cfg.use_logit:
                t_scores = candidate_scores(self.teacher, t_out.output[mask], real, negatives)
                t_logits = corrected_logits(t_scores, real, negatives, sampler, cfg.kd_temperature)
        with autocast(self.device, self.amp):
            out, logits, embedding, hidden = self.net(inputs, weights, targets, negatives)
        terms: dict[str, torch.Tensor] = {}
        if cfg.use_ce:
            if sampler is None:
                terms["ce"] = next_item_loss(logits, targets)
            else:
                terms["ce"] = sampled_next_item_loss(logits, real, negatives, sampler)
        if cfg.use_emb:
            terms["emb"] = embedding_loss(embedding.float(), t_out.embedding, nn.Identity(), mask)
        if cfg.use_hid:
            hidden = [h.float() for h in hidden]
            if cfg.layer_mapping == "emd":
                terms["hid"], _ = self.mapper(hidden, t_out.hidden_states, mask)
            else:
                dist_matrix = hidden_distance_matrix(
                    hidden, t_out.hidden_states, mask, cfg.hid_distance
                )
                terms["hid"] = fixed_mapping_loss(dist_matrix, cfg.layer_mapping)
        if cfg.use_logit and sampler is None:
            terms["logit"] = logit_kd_loss(logits.float(), t_logits, mask, cfg.kd_temperature)
        elif cfg.use_logit:
            s_logits = corrected_logits(logits, real, negatives, sampler, cfg.kd_temperature)
            terms["logit"] = candidate_kd_loss(s_logits, t_logits, cfg.kd_temperature)
        return terms

    def total_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        gamma = self.epoch_gamma
        kd = sum(terms[k] for k in ("emb", "hid", "logit") if k in terms)
        total = torch.zeros((), device=self.device)
        if "ce" in terms:
            total = total + (1 - gamma) * terms["ce"]
        if any(k in terms for k in ("emb", "hid", "logit")):
            total = total + gamma * kd
        return total

    # -- the Stage protocol ----------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        self.epoch_gamma = cfg.gamma * cfg.gamma_decay**epoch
        if self.held_out_loader is not None:
            self.held_out_sampler.set_epoch(epoch)
            self.held_out_iter = itertools.cycle(self.held_out_loader)
        record = {"gamma": self.epoch_gamma, "lr": self.optimizer.param_groups[0]["lr"]}
        if self.architect is not None:
            record["tau"] = self.architect.start_epoch(epoch)
            record["alpha_frozen"] = self.architect.frozen(epoch)
        return record

    def train_step(self, batch: torch.Tensor, epoch: int, step: int) -> dict[str, float]:
        self.net.train()
        self.mapper.train()
        architect = self.architect
        inputs, targets = next_item_batch(batch.to(self.device), epoch, step)
        weights = architect.sample(epoch, step) if architect is not None else None
        terms = self.loss_terms(inputs, targets, weights)
        loss = self.total_loss(terms)
        penalty = None
        if architect is not None and not self.bilevel and not architect.frozen(epoch):
            penalty = architect.penalty(loss, weights, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        if architect is not None:
            architect.zero_grad()
        (loss if penalty is None else loss + penalty).backward()
        if self.loop.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.loop.clip_grad
            )
        self.optimizer.step()
        if architect is not None:
            architect.step(epoch, self._held_out_loss(epoch, step) if self.bilevel else None)
        values = {k: v.item() for k, v in terms.items()}
        values["loss"] = loss.item()
        if penalty is not None:
            # alpha's terms together: the cost term and the entropy ramp (which is not zero
            # when the cell is within its budget)
            values["penalty"] = penalty.item()
        return values

    def _held_out_loss(self, epoch: int, step: int):
        """First-order bi-level: alpha follows the loss on windows the weights never fit."""

        def loss() -> tuple[torch.Tensor, list[torch.Tensor]]:
            held = next(self.held_out_iter).to(self.device)
            h_inputs, h_targets = next_item_batch(held, epoch, step)
            h_weights = self.architect.sample(epoch, step, salt=1)
            self.mapper.eval()  # the held-out pass must not move the EMD layer weights
            return self.total_loss(self.loss_terms(h_inputs, h_targets, h_weights)), h_weights

        return loss

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        if self.scheduler is not None:
            self.scheduler.step()
        record: dict[str, Any] = {}
        if self.cfg.use_hid and self.cfg.layer_mapping == "emd":
            record["emd_student_weights"] = self.mapper.student_weights.tolist()
            record["emd_teacher_weights"] = self.mapper.teacher_weights.tolist()
        if self.architect is not None:
            record.update(self.architect.epoch_record())
        return record

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "architect": self.architect.state_dict() if self.architect else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "projections": {
                k: v for k, v in self.kd.state_dict().items() if not k.startswith("student.")
            },
            "mapper": self.mapper.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.architect is not None and state["architect"] is not None:
            self.architect.load_state_dict(state["architect"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.kd.load_state_dict(state["projections"], strict=False)
        self.mapper.load_state_dict(state["mapper"])
