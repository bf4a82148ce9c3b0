"""Many-to-many layer distillation with Earth Mover's Distance (BERT-EMD, used by AdaRec).

Student layer i and teacher layer j exchange "mass" flow(i, j), the exact optimal transport
between the student layer weights and the teacher layer weights under the cost d(i, j).
The loss is sum flow(i, j) d(i, j) with the flow held constant. After each training batch
both weight vectors move towards the layers that transport cheaply ("cost attention").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ot
import torch
from torch import nn

from adarec.distill.losses import hidden_distance_matrix
from adarec.runtime import distributed

# Keeps the re-weighting finite when a layer's transport cost (or weight) is exactly 0.
_EPS = 1e-12


def _as_distribution(weights: np.ndarray | torch.Tensor) -> np.ndarray:
    values = (
        weights.detach().cpu().double().numpy()
        if isinstance(weights, torch.Tensor)
        else np.asarray(weights, dtype=np.float64)
    )
    total = values.sum()
    if values.ndim != 1 or total <= 0 or (values < 0).any():
        raise ValueError("layer weights must be a non-negative vector with a positive sum")
    return values / total


def emd_flow(
    student_weights: np.ndarray | torch.Tensor,
    teacher_weights: np.ndarray | torch.Tensor,
    cost: np.ndarray,
) -> np.ndarray:
    """Exact optimal transport plan [S, T] (float64) between the normalised layer weights."""
    a = _as_distribution(student_weights)
    b = _as_distribution(teacher_weights)
    cost = np.ascontiguousarray(cost, dtype=np.float64)
    if cost.shape != (a.size, b.size):
        raise ValueError(f"cost has shape {cost.shape}, expected {(a.size, b.size)}")
    return ot.emd(a, b, cost)


def reweight(
    weights: torch.Tensor,
    flow: torch.Tensor | np.ndarray,
    dist: torch.Tensor | np.ndarray,
    side: str = "student",
    temperature: float = 10.0,
) -> torch.Tensor:
    """One BERT-EMD "cost attention" update of one side's layer weights (returns new weights).

    c_i = sum_j flow(i, j) d(i, j) (teacher side: sum over i); w_i <- c_i / w_i;
    w_i <- (sum_k w_k) / w_i; w <- softmax(w / temperature). Both divisions clamp their
    denominator at 1e-12, so a layer that transports at zero cost gets (nearly) all the
    weight instead of a division by zero.
    """
    flow = torch.as_tensor(flow, dtype=weights.dtype, device=weights.device)
    dist = torch.as_tensor(dist, dtype=weights.dtype, device=weights.device)
    if side not in ("student", "teacher"):
        raise ValueError(f"side must be 'student' or 'teacher', not {side!r}")
    cost = (flow * dist).sum(dim=1 if side == "student" else 0)
    w = cost / weights.clamp_min(_EPS)
    w = w.sum() / w.clamp_min(_EPS)
    return torch.softmax(w / temperature, dim=0)


class EMDLayerMapper(nn.Module):
    """The EMD hidden-layer loss, holding both layer-weight vectors as checkpointed buffers.

    Under DDP every rank averages the (detached) distance matrix first, so all ranks solve
    the same transport problem and apply the same weight update from the same start: the
    weights stay identical without being broadcast. Gradients still come from each rank's
    local distances.
    """

    student_weights: torch.Tensor
    teacher_weights: torch.Tensor

    def __init__(
        self, num_student: int, num_teacher: int, distance: str = "kl", temperature: float = 10.0
    ):
        super().__init__()
        self.distance = distance
        self.temperature = temperature
        # float64: the weights feed an exact LP and are updated thousands of times.
        self.register_buffer(
            "student_weights", torch.full((num_student,), 1.0 / num_student, dtype=torch.float64)
        )
        self.register_buffer(
            "teacher_weights", torch.full((num_teacher,), 1.0 / num_teacher, dtype=torch.float64)
        )

    def forward(
        self,
        student_hidden: list[torch.Tensor],
        teacher_hidden: list[torch.Tensor],
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``student_hidden`` S x [B,L,Ct] (projected), ``teacher_hidden`` T x [B,L,Ct]."""
        expected = (self.student_weights.numel(), self.teacher_weights.numel())
        if (len(student_hidden), len(teacher_hidden)) != expected:
            raise ValueError(
                f"got {len(student_hidden)} student and {len(teacher_hidden)} teacher layers, "
                f"the mapper was built for {expected[0]} and {expected[1]}"
            )
        dist = hidden_distance_matrix(student_hidden, teacher_hidden, mask, self.distance)
        shared = distributed.all_reduce_mean(dist.detach().clone())
        flow = emd_flow(self.student_weights, self.teacher_weights, shared.double().cpu().numpy())
        loss = (torch.as_tensor(flow, dtype=dist.dtype, device=dist.device) * dist).sum()
        if self.training:
            with torch.no_grad():
                new_student = reweight(
                    self.student_weights, flow, shared, "student", self.temperature
                )
                new_teacher = reweight(
                    self.teacher_weights, flow, shared, "teacher", self.temperature
                )
                self.student_weights.copy_(new_student)
                self.teacher_weights.copy_(new_teacher)
        return loss, {"flow": flow}
