"""What every sequential recommender in adarec exposes (teachers and students alike)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from adarec.config import ModelConfig


@dataclass
class SeqOutput:
    """A forward pass: embedding output, the layers used for distillation, final states."""

    embedding: torch.Tensor  # [B, L, H]
    hidden_states: list[torch.Tensor] = field(default_factory=list)  # each [B, L, H]
    output: torch.Tensor | None = None  # [B, L, H]


@dataclass
class CandidateScores:
    """The logits of the real positions on their candidates, before any correction.

    ``target`` [P]: each position's own target; ``negatives`` [P, S]: the shared negatives.
    """

    target: torch.Tensor
    negatives: torch.Tensor


def head_scores(
    output: torch.Tensor, layer: nn.Linear, targets: torch.Tensor, negatives: torch.Tensor
) -> CandidateScores:
    """The output layer ``layer`` (over [padding] + items) on the candidates only.

    ``output`` [P, H] (the real positions), ``targets`` [P], ``negatives`` [S]. Only the
    P + S rows of the weight are read; the cost is P x S x H.
    """
    weight = layer.weight
    target = (output * weight[targets]).sum(-1)
    negative = output @ weight[negatives].t()
    if layer.bias is not None:
        target = target + layer.bias[targets]
        negative = negative + layer.bias[negatives]
    return CandidateScores(target, negative)


class SequentialRecommender(nn.Module):
    """Base class: subclasses define ``item_embedding``, ``output_layer`` and ``forward``.

    ``item_embedding`` and ``output_layer`` are the parts that scale with the catalogue;
    everything else is the model's "body" (see ``count_parameters``).
    """

    num_items: int
    max_len: int

    def forward(self, items: torch.Tensor) -> SeqOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """Scores over [padding] + items for every position: [..., num_items + 1]."""
        return self.output_layer(output)

    def item_logits(self, output: torch.Tensor) -> torch.Tensor:
        """Scores over the real items only: [..., num_items] (column j is item j + 1).

        What the training losses read. Padding is never a target, and leaving its row of
        the output layer out of the product spares copying the whole [B, L, N] score tensor
        to drop column 0 (and zero-filling its gradient): a third of the head and loss
        time of a step, with the same values as ``logits(output)[..., 1:]``.
        """
        layer = self.output_layer
        bias = None if layer.bias is None else layer.bias[1:]
        return F.linear(output, layer.weight[1:], bias)

    def candidate_scores(
        self, output: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
    ) -> CandidateScores:
        """Scores of ``output`` [P, H] on its targets [P] and the shared ``negatives`` [S]
        only (what the sampled softmax reads): the same values as columns of ``logits``,
        from P + S rows of the output layer."""
        return head_scores(output, self.output_layer, targets, negatives)

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor:
        """Scores at the last position only: [B, num_items + 1] (column 0 is padding)."""
        return self.logits(self.forward(items).output[:, -1, :])

    def to_spec(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """What rebuilds this architecture (``from_spec``): model files keep it beside the
        weights, as nanoGPT's checkpoints keep ``model_args``. Plain JSON-able values."""
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Self:  # pragma: no cover - abstract
        """An untrained model of the architecture that ``spec`` (``to_spec``) describes."""
        raise NotImplementedError


class Teacher(SequentialRecommender):
    """A model of ``adarec.models`` built from a ModelConfig: the teachers, the hand-designed
    small students of their families, and the popularity baseline.

    Its spec keeps the whole configuration: ``{"kind": "teacher", "model": asdict(config),
    "num_items", "max_len"}``. Subclasses say which constructor arguments the configuration
    sets (``config_arguments``).
    """

    config: ModelConfig | None = None  # what from_config built it from

    @classmethod
    def config_arguments(cls, cfg: ModelConfig) -> dict[str, Any]:
        """The constructor's keyword arguments (beside num_items and max_len) that ``cfg``
        sets; subclasses add their own to these, which every neural teacher takes."""
        return {
            "hidden_size": cfg.hidden_size,
            "num_blocks": cfg.num_blocks,
            "dropout": cfg.dropout,
            "distill_every": cfg.distill_every,
        }

    @classmethod
    def from_config(cls, cfg: ModelConfig, num_items: int, max_len: int) -> Self:
        """An untrained model of the hyper-parameters in ``cfg``."""
        model = cls(num_items, max_len, **cls.config_arguments(cfg))
        # A copy: the spec must describe this model even if the caller's config changes later.
        model.config = copy.deepcopy(cfg)
        return model

    def to_spec(self) -> dict[str, Any]:
        if self.config is None:
            raise ValueError(f"{type(self).__name__} has no spec: build it with from_config")
        return {
            "kind": "teacher",
            "model": asdict(self.config),
            "num_items": self.num_items,
            "max_len": self.max_len,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Self:
        return cls.from_config(ModelConfig(**spec["model"]), spec["num_items"], spec["max_len"])


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total parameters, and the body: everything outside item embedding and output layer."""
    total = sum(p.numel() for p in model.parameters())
    catalogue = 0
    for name in ("item_embedding", "output_layer"):
        module = getattr(model, name, None)
        if module is not None:
            catalogue += sum(p.numel() for p in module.parameters())
    return {"total": total, "body": total - catalogue}
