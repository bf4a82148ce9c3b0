"""Sampled softmax: training losses whose cost does not grow with the catalogue.

Each step draws S negatives once from a proposal Q over the items 1..N, shared by every
position of the batch. A position is scored on its own target and on those S items only
(the rows of the output layer are gathered: no [B, L, N] tensor exists), and every
candidate's logit has log(S q(y)), the log of its expected count in the draw, subtracted:
the log-Q correction that makes the softmax over the candidates estimate the full one
(Bengio & Senecal 2008; Jean et al. 2015; Yi et al. 2019 for recommenders). A negative that
equals the position's target (an "accidental hit") is masked out of that position's
candidates. Negatives are drawn with replacement from the global torch generator, so a
resumed run draws as an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adarec.config import SampledSoftmaxConfig
from adarec.models.base import CandidateScores


class NegativeSampler:
    """Draws the shared negatives of a step and knows each item's log expected count.

    ``weights`` [N + 1]: the unnormalised proposal over [padding] + items (index 0 is
    ignored and never drawn); every item must have a positive weight, as a target of zero
    probability would get an infinite correction.
    """

    def __init__(self, weights: np.ndarray | torch.Tensor, negatives: int):
        q = torch.as_tensor(weights, dtype=torch.float64).clone()
        q[0] = 0.0
        if q.dim() != 1 or len(q) < 2 or not bool((q[1:] > 0).all()) or not q.isfinite().all():
            raise ValueError("proposal weights must be positive and finite for every item")
        if negatives < 1:
            raise ValueError(f"negatives must be positive, got {negatives}")
        q = q / q.sum()
        self.negatives = negatives
        self.num_items = len(q) - 1
        self.probs = q.float()
        # log(S q(y)) for y in 0..N; padding's entry is -inf and is never read.
        self.log_expected = (torch.log(q) + np.log(negatives)).float()

    def to(self, device: torch.device) -> NegativeSampler:
        self.probs = self.probs.to(device)
        self.log_expected = self.log_expected.to(device)
        return self

    def draw(self) -> torch.Tensor:
        """S item ids in 1..N, with replacement: [S]."""
        return torch.multinomial(self.probs, self.negatives, replacement=True)


def proposal_weights(cfg: SampledSoftmaxConfig, counts: np.ndarray) -> np.ndarray:
    """The proposal's unnormalised weights [N + 1] from the training counts [N + 1].

    popularity: (count + 1) ** power (the +1 keeps an item unseen in training drawable,
    so its correction stays finite); uniform: 1 for every item.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if cfg.proposal == "uniform":
        return np.ones_like(counts)
    return (counts + 1.0) ** cfg.power


def make_sampler(cfg: SampledSoftmaxConfig, counts: np.ndarray) -> NegativeSampler | None:
    """The sampler the training losses use for a catalogue of ``len(counts) - 1`` items,
    or None (full softmax) below ``cfg.min_items``."""
    num_items = len(counts) - 1
    if num_items < cfg.min_items:
        return None
    return NegativeSampler(proposal_weights(cfg, counts), cfg.negatives)


def candidate_scores(
    model: nn.Module, output: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> CandidateScores:
    """``model``'s scores of the candidates: its ``candidate_scores`` where it has one (every
    adarec model), else its full ``logits`` gathered (a user's teacher: correct, not cheap)."""
    if hasattr(model, "candidate_scores"):
        return model.candidate_scores(output, targets, negatives)
    logits = model.logits(output)
    return CandidateScores(logits.gather(-1, targets[:, None]).squeeze(-1), logits[:, negatives])


def corrected_logits(
    scores: CandidateScores,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    sampler: NegativeSampler,
    temperature: float = 1.0,
) -> torch.Tensor:
    """[P, 1 + S]: target first, then the negatives, each divided by ``temperature`` and
    less its log expected count; accidental hits are -inf."""
    log_expected = sampler.log_expected
    # In the correction's precision (float32): bfloat16 scores under autocast are lifted.
    dtype = log_expected.dtype
    target = scores.target.to(dtype) / temperature - log_expected[targets]
    negative = scores.negatives.to(dtype) / temperature - log_expected[negatives][None, :]
    negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    return torch.cat([target[:, None], negative], dim=1)


def sampled_next_item_loss(
    scores: CandidateScores,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    sampler: NegativeSampler,
) -> torch.Tensor:
    """Sampled-softmax cross-entropy over [target, negatives], mean over the P positions
    (0, still attached to the graph, when there is none)."""
    logits = corrected_logits(scores, targets, negatives, sampler)
    if logits.size(0) == 0:
        return logits.sum()
    zeros = torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, zeros)
