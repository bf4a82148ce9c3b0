"""The architect: everything that moves the architecture parameters alpha (as in DARTS).

It samples the architecture of each step, computes the cost term, and steps alpha; the
distillation objective that scores a sampled architecture lives in the distillation stage.

Cost forms (``search.cost_form``), compared from the literature (../shared/RESEARCH.md):

- ``budget`` (default): MnasNet's reward ACC x (C/T)^w turned into a loss term,
  ``L_task x w x log(E[C] / T)`` with w = ``cost_over`` when the cell is over the target T
  and ``cost_under`` when it is not. Why this one: (1) scaled by the (detached) task loss
  and taken on a log ratio, the term is dimensionless, so one default weight means the
  same trade on every dataset and catalogue size, unlike a fixed beta times a table;
  (2) E[C] is the expected cost under softmax(alpha) (ProxylessNAS), so while the term is
  on, every op of every edge gets a cost gradient, not only the sampled ones; (3) over
  the target the exponent 1 makes each 1% over budget cost 1% of the loss, which no
  accuracy gain of one op outweighs. FBNet's CE x a log(LAT)^b has no target at all, and
  ProxylessNAS's additive ``(E - T) / T`` keeps pushing below the target.

  Defaults, from measurements on ml-1m (4-epoch search, budget 5x, one convolution per cell
  fits): MnasNet's hard form (``cost_under`` 0: no pressure under the target) and the
  *derived* cell's cost deciding whether the cell is over (``cost_gate``). Alpha is
  stepped by Adam, which divides each step by the gradient's running size: a cost gradient
  that points the same way at every step moves alpha by about the full learning rate,
  whatever its weight, while the accuracy gradient is noisy (one sampled architecture,
  one batch). So any active cost term decides: with MnasNet's soft elasticity 0.07 on
  both sides, one alpha epoch pushed every convolution of every edge from 0.125 to
  0.03-0.10 alike; with the gate on E[C], the near-uniform start (E[C] = 2.3x the target,
  since half the ops are convolutions) did the same, and the search derived pools only.
  Without a cost term the same search put a dilated conv on one edge (p 0.87 after two
  alpha epochs) and pools or skips elsewhere, 3.1 MMACs against a 4.3 MMAC target: the
  accuracy gradient spends the budget where the data rewards it once the cost term is
  silent while the derived cell fits. Gated on the derived cell, the term acts only while
  the cell that would be derived is over budget, and ``derive_within_budget`` repairs
  whatever is left at the end. ``cost_gate=expected`` and ``cost_under`` 0.07 give the
  earlier behaviour.
- ``absolute``: TuNAS's ``|E[C] / T - 1|`` (weight ``cost_over``, scaled like ``budget``):
  it also penalises a cell that is cheaper than the target, which hits a requested cost in
  one search but spends the budget even where the data does not reward it.
- ``paper``: AdaRec's ``beta x sum over sampled edges of <one-hot, cost table>`` with the
  mean-1 table of ``adarec.distill.cost`` (kept for comparison; with beta 8 it decides
  the architecture on its own).

Architecture weights that decide: after the warm-up, the mean edge entropy of softmax(alpha)
is added to alpha's loss with a weight that grows linearly from 0 to ``search.entropy``
(scaled by the task loss like the cost term) over the remaining epochs. The accuracy and
cost gradients choose the direction while the weight is small; the entropy term then turns
the leading op of each edge into a clear winner (the softmax analogue of Fair DARTS's
zero-one loss), so that derivation reads a distribution close to the one-hot it derives
instead of the argmax of a nearly flat one.

Alpha is frozen for the first ``search.warmup`` fraction of the epochs (TuNAS freezes it
for 25% of the steps, FBNet and ProxylessNAS also warm the weights up first): the ops are
sampled uniformly and all of them train, so that when alpha starts to move, an op is not
ruled out only for being untrained (the rich-get-richer effect of FairNAS).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from adarec.config import SearchConfig
from adarec.distill.cost import cost_loss
from adarec.nas.budget import CostModel
from adarec.nas.supernet import Supernet, alpha_summary, temperature

COST_FORMS = ("budget", "absolute", "paper")


def budget_penalty(
    expected: torch.Tensor,
    target: float,
    task_loss: torch.Tensor,
    form: str = "budget",
    under: float = 0.0,
    over: float = 1.0,
    gate: float | None = None,
) -> torch.Tensor:
    """The cost term of ``form`` ("budget" or "absolute"); see the module docstring.

    ``gate``: the cost that decides between the under and over weights of the budget form
    (the derived cell's); None: ``expected`` itself.
    """
    ratio = expected / target
    scale = task_loss.detach()
    if form == "budget":
        over_target = (float(ratio.detach()) if gate is None else gate / target) > 1.0
        return scale * (over if over_target else under) * torch.log(ratio)
    if form == "absolute":
        return scale * over * (ratio - 1.0).abs()
    raise ValueError(f"unknown cost form {form!r}")


def mean_entropy(alphas: list[torch.Tensor]) -> torch.Tensor:
    """Mean over edges of the entropy of softmax(alpha) (nats; differentiable)."""
    rows = torch.cat([a.reshape(-1, a.size(-1)) for a in alphas])
    log_p = torch.log_softmax(rows, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1).mean()


class Architect:
    """Samples architectures, computes the cost term and steps alpha of a ``Supernet``."""

    def __init__(
        self,
        supernet: Supernet,
        cfg: SearchConfig,
        seed: int,
        cost_model: CostModel | None = None,
        paper_costs: dict[str, float] | None = None,
    ):
        self.supernet, self.cfg, self.seed = supernet, cfg, seed
        self.alphas = supernet.arch_parameters()
        self.optimizer = torch.optim.Adam(
            self.alphas, lr=cfg.alpha_lr, betas=(0.5, 0.999), weight_decay=cfg.alpha_weight_decay
        )
        self.cost_model = cost_model if cfg.use_cost and cfg.cost_form != "paper" else None
        self.paper_costs = None
        if cfg.use_cost and cfg.cost_form == "paper":
            if paper_costs is None:
                raise ValueError("the paper's cost form needs the cost table")
            device = self.alphas[0].device
            self.paper_costs = torch.tensor(
                [paper_costs[o] for o in supernet.op_names], dtype=torch.float32, device=device
            )
        self.warmup_epochs = int(cfg.warmup * cfg.epochs)
        self.tau = cfg.tau_initial
        self.remember_initial()

    def remember_initial(self) -> None:
        """Keep alpha's starting values (drift is measured from them); called again once
        DistributedDataParallel has given every rank rank 0's values."""
        self.initial = [a.detach().clone() for a in self.alphas]

    def frozen(self, epoch: int) -> bool:
        """Alpha does not move during the weight warm-up."""
        return epoch < self.warmup_epochs

    def start_epoch(self, epoch: int) -> float:
        self.tau = temperature(epoch, self.cfg.tau_initial, self.cfg.tau_decay, self.cfg.tau_every)
        return self.tau

    def entropy_weight(self, epoch: int) -> float:
        """0 until the warm-up ends, then linearly up to ``search.entropy`` at the last epoch."""
        if self.frozen(epoch) or self.cfg.entropy <= 0:
            return 0.0
        span = max(1, self.cfg.epochs - self.warmup_epochs)
        return self.cfg.entropy * min(1.0, (epoch - self.warmup_epochs + 1) / span)

    def sample(self, epoch: int, step: int, salt: int = 0) -> list[torch.Tensor]:
        """The step's architecture: the same on every rank (seeded by seed, epoch, step)."""
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + epoch * 100_003 + step * 7 + salt) % (2**63 - 1)
        )
        return self.supernet.sample_architecture(self.tau, generator)

    def expected_cost(self) -> torch.Tensor | None:
        if self.cost_model is None:
            return None
        reach = self.supernet.genotype().cell_reach()
        return self.cost_model.expected(self.alphas, self.supernet.op_names, reach)

    def derived_cost(self) -> float | None:
        """The modelled cost of the cell derived from alpha now (argmax on every edge)."""
        if self.cost_model is None:
            return None
        return self.cost_model.of_genotype(self.supernet.genotype())

    def penalty(
        self, task_loss: torch.Tensor, samples: list[torch.Tensor], epoch: int
    ) -> torch.Tensor | None:
        """The terms alpha adds to ``task_loss``: cost and entropy (None when neither)."""
        cfg = self.cfg
        terms = []
        if self.paper_costs is not None:
            terms.append(cfg.beta * cost_loss(samples, self.paper_costs))
        expected = self.expected_cost()
        if expected is not None:
            terms.append(
                budget_penalty(
                    expected,
                    self.cost_model.target,
                    task_loss,
                    cfg.cost_form,
                    cfg.cost_under,
                    cfg.cost_over,
                    self.derived_cost() if cfg.cost_gate == "derived" else None,
                )
            )
        weight = self.entropy_weight(epoch)
        if weight > 0:
            terms.append(task_loss.detach() * weight * mean_entropy(self.alphas))
        return sum(terms) if terms else None

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(
        self,
        epoch: int,
        held_out_loss: Callable[[], tuple[torch.Tensor, list[torch.Tensor]]] | None = None,
    ) -> None:
        """Step alpha on the gradient already accumulated (single-level), or on the loss of
        held-out windows plus the cost term (first-order bi-level). No step in warm-up."""
        if self.frozen(epoch):
            return
        if held_out_loss is not None:
            self.zero_grad()
            loss, samples = held_out_loss()
            penalty = self.penalty(loss, samples, epoch)
            (loss if penalty is None else loss + penalty).backward()
        self.optimizer.step()

    def epoch_record(self) -> dict[str, Any]:
        """Alpha's state for the history: entropy, largest probability, drift, cost."""
        summary = alpha_summary(self.alphas)
        drift = max(
            float((a.detach() - a0).abs().max())
            for a, a0 in zip(self.alphas, self.initial, strict=True)
        )
        maxima = [max(e["probs"]) for e in summary["edges"]]
        record: dict[str, Any] = {
            "alpha_entropy": summary["mean_entropy"],
            "alpha_max_prob": summary["max_prob"],
            "alpha_decided_edges": sum(m >= 0.5 for m in maxima),
            "alpha_drift": drift,
            "alpha_uniform_entropy": math.log(len(self.supernet.op_names)),
            "alpha_probs": summary["edges"],
        }
        expected = self.expected_cost()
        if expected is not None:
            record["expected_cost"] = float(expected.detach())
            record["derived_cost"] = self.derived_cost()
            record["cost_target"] = self.cost_model.target
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "initial_alphas": self.initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        device = self.alphas[0].device
        self.initial = [a.to(device) for a in state["initial_alphas"]]
