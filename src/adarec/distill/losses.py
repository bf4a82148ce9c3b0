"""Distillation losses between a student and a frozen teacher, over real positions only.

Every loss takes ``mask`` [B, L] (True where the position is real and has a target) and
selects those positions before computing anything, so padding neither enters the average
nor receives gradient (the public release averaged padding in). With no real position a
loss is 0, still attached to the graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _masked_mean(total: torch.Tensor, count: int) -> torch.Tensor:
    """``total / count``, or ``total`` itself (a sum over nothing: 0) when ``count`` is 0."""
    return total / max(count, 1)


def embedding_loss(
    student_emb: torch.Tensor, teacher_emb: torch.Tensor, proj: nn.Module, mask: torch.Tensor
) -> torch.Tensor:
    """MSE between ``proj(student)`` [B,L,Cs]->[B,L,Ct] and the teacher embedding, per channel."""
    student = proj(student_emb[mask]).float()
    teacher = teacher_emb[mask].float()
    return _masked_mean(((student - teacher) ** 2).sum(), teacher.numel())


def logit_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """KL(teacher || student) of softmax(logits / tau) over the items, mean over positions.

    Both are scores over the real items only ([B, L, N], no padding column: what
    ``item_logits`` returns). The result is multiplied by
    tau^2 (Hinton et al.) so that its gradient keeps the same scale whatever tau is; at the
    paper's tau = 1 this changes nothing.
    """
    student = student_logits[mask].float() / temperature
    teacher = teacher_logits[mask].float() / temperature
    kl = F.kl_div(
        F.log_softmax(student, dim=-1),
        F.log_softmax(teacher, dim=-1),
        reduction="sum",
        log_target=True,
    )
    return _masked_mean(kl, student.size(0)) * temperature**2


def candidate_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher || student) over each position's sampled candidates, mean over positions.

    Both are [P, 1 + S] logits of the real positions on the same candidates, already at
    the temperature and log-Q corrected (``adarec.train.sampled.corrected_logits``), with
    -inf at the same entries (accidental hits), which contribute nothing. Times tau^2, as
    ``logit_kd_loss``.
    """
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    log_t = F.log_softmax(teacher_logits.float(), dim=-1)
    p_t = log_t.exp()
    # Zeroing the masked entries before the difference keeps -inf - -inf (NaN) out.
    out = ~torch.isfinite(teacher_logits)
    kl = (p_t * (log_t.masked_fill(out, 0.0) - log_s.masked_fill(out, 0.0))).sum()
    return _masked_mean(kl, student_logits.size(0)) * temperature**2


def hidden_distance_matrix(
    student_hidden: list[torch.Tensor],
    teacher_hidden: list[torch.Tensor],
    mask: torch.Tensor,
    distance: str = "kl",
) -> torch.Tensor:
    """d(i, j) between student layer i and teacher layer j, averaged over real positions: [S, T].

    Student layers must already be projected to the teacher width. ``"kl"`` (paper):
    KL(teacher || student) between the channel-wise softmax of the two hidden vectors of a
    position; ``"mse"``: mean squared error over channels. Both are expanded into per-layer
    terms plus one cross term, so no [S, T, positions, channels] tensor is ever built.
    """
    student = torch.stack([h[mask] for h in student_hidden]).float()  # [S, P, C]
    teacher = torch.stack([h[mask] for h in teacher_hidden]).float()  # [T, P, C]
    positions, channels = teacher.size(1), teacher.size(2)
    if distance == "kl":
        log_s = F.log_softmax(student, dim=-1)
        log_t = F.log_softmax(teacher, dim=-1)
        p_t = log_t.exp()
        # sum_c p_t (log p_t - log p_s) = -H(p_t) - sum_c p_t log p_s, summed over positions.
        neg_entropy = (p_t * log_t).sum(dim=(1, 2))  # [T]
        cross = torch.einsum("spc,tpc->st", log_s, p_t)  # [S, T]
        return _masked_mean(neg_entropy[None, :] - cross, positions)
    if distance == "mse":
        # |s - t|^2 = |s|^2 + |t|^2 - 2 s.t, summed over positions and channels.
        s_sq = (student**2).sum(dim=(1, 2))
        t_sq = (teacher**2).sum(dim=(1, 2))
        cross = torch.einsum("spc,tpc->st", student, teacher)
        total = s_sq[:, None] + t_sq[None, :] - 2 * cross
        # Rounding can leave a tiny negative where the layers coincide.
        return _masked_mean(total.clamp_min(0.0), positions * channels)
    raise ValueError(f"unknown hidden-layer distance {distance!r} (expected 'kl' or 'mse')")


def fixed_mapping_pairs(num_student: int, num_teacher: int, mapping: str) -> list[tuple[int, int]]:
    """The (student layer, teacher layer) pairs of a fixed one-to-one mapping, 0-based.

    ``"skip"`` (uniform, TinyBERT): student i matches teacher round((i+1) T / S) - 1, rounding
    halves up (not Python's to-even) and clamping to layer 0 when S > 2T.
    ``"last"``: the last S teacher layers one to one, student i matches teacher T - S + i;
    when S > T the first student layers all match teacher layer 0.
    """
    s, t = num_student, num_teacher
    if mapping == "skip":
        return [(i, max(math.floor((i + 1) * t / s + 0.5) - 1, 0)) for i in range(s)]
    if mapping == "last":
        return [(i, max(t - s + i, 0)) for i in range(s)]
    raise ValueError(f"unknown fixed layer mapping {mapping!r} (expected 'skip' or 'last')")


def fixed_mapping_loss(dist: torch.Tensor, mapping: str) -> torch.Tensor:
    """Mean of ``dist`` [S, T] over the pairs of a fixed mapping (see ``fixed_mapping_pairs``)."""
    pairs = fixed_mapping_pairs(dist.size(0), dist.size(1), mapping)
    rows = torch.tensor([i for i, _ in pairs], device=dist.device)
    cols = torch.tensor([j for _, j in pairs], device=dist.device)
    return dist[rows, cols].mean()
