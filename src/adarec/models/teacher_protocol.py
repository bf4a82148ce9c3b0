"""What a teacher must provide to be distilled, and a check that a given module does.

adarec's own teachers (NextItNet, SASRec, BERT4Rec after causal fine-tuning) follow the
``TeacherProtocol``; so can any torch module of a user's, which the search and the
retraining then distil exactly as they distil ours (see ``adarec.api.search``).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from adarec.errors import UserError
from adarec.models.base import SeqOutput


class TeacherProtocol(Protocol):
    """A sequential recommender that a student can be distilled from.

    Inputs are ``items``, a LongTensor [B, L] of the prepared data's internal item ids
    (1..N; 0 is padding, on the left), with L the run's ``data.max_len``. C_t below is
    ``hidden_size``; the student's widths are projected to it by learned linear maps.

    - ``forward(items)`` returns a ``SeqOutput`` (or any object with these attributes):
      ``embedding`` [B, L, C_t], the input representation that L_emb matches;
      ``hidden_states``, a list of T tensors [B, L, C_t], the intermediate layers to distil,
      ordered from input to output; ``output`` [B, L, C_t], the final states.
    - ``logits(output)`` [B, L, N + 1]: scores over padding (column 0, ignored) and the N
      items at every position; their softmax at temperature tau is L_logit's target.
    - ``full_sort_predict(items)`` [B, N + 1]: the scores at the last position. A speed-up
      budget ("5x") counts the teacher's MACs, or times it, through this call.
    - optional ``candidate_scores(output, targets, negatives)``: the columns of ``logits``
      at each position's target and at shared negatives only (``CandidateScores``), which
      the sampled-softmax distillation reads; without it ``logits`` is gathered.

    "Hidden states" are whichever layers the teacher offers: EMD matches the student's K
    cell outputs with these T layers many to many (an optimal transport between two sets
    of layer weights, costed by a distance between hidden vectors at the same positions),
    so T need not equal K, and each student cell learns from the teacher layers that suit
    it. Every layer must have the width C_t (one projection serves all student cells).

    Causal: the outputs at position t may depend on items[:, : t + 1] only. The student
    learns to predict item t + 1 at position t from the teacher's outputs there; a teacher
    that sees later items hands it the answer (adarec's BERT4Rec is a teacher only after
    its causal fine-tuning). Distillation runs the teacher in eval mode, without gradients,
    with its parameters frozen.
    """

    hidden_size: int

    def __call__(self, items: torch.Tensor) -> SeqOutput: ...

    def logits(self, output: torch.Tensor) -> torch.Tensor: ...

    def full_sort_predict(self, items: torch.Tensor) -> torch.Tensor: ...


def _probe(num_items: int, max_len: int, device: torch.device) -> torch.Tensor:
    """Two histories [2, max_len]: one full, one left-padded (the cases a teacher meets)."""
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, num_items + 1, (2, max_len), generator=generator)
    items[1, : max_len // 2] = 0
    return items.to(device)


def _outputs(teacher: nn.Module, items: torch.Tensor) -> dict[str, torch.Tensor]:
    out = teacher(items)
    missing = [key for key in ("embedding", "hidden_states", "output") if not hasattr(out, key)]
    if missing:
        raise UserError(
            f"the teacher's forward must return embedding, hidden_states and output "
            f"(a SeqOutput); {type(out).__name__} has no {missing[0]!r}"
        )
    if not isinstance(out.hidden_states, list | tuple) or not out.hidden_states:
        raise UserError("the teacher's hidden_states must be a non-empty list of tensors")
    named = {"embedding": out.embedding, "output": out.output}
    named.update({f"hidden_states[{i}]": h for i, h in enumerate(out.hidden_states)})
    named["logits"] = teacher.logits(out.output)
    return named


def _check_candidate_scores(
    teacher: nn.Module, outputs: dict[str, torch.Tensor], items: torch.Tensor, num_items: int
) -> None:
    """A teacher's own ``candidate_scores`` (what the sampled-softmax KD reads in place of
    ``logits``) must give the very columns of its ``logits``."""
    output = outputs["output"].reshape(-1, outputs["output"].size(-1))
    logits = outputs["logits"].reshape(-1, num_items + 1)
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(1, num_items + 1, (len(output),), generator=generator)
    negatives = torch.randint(1, num_items + 1, (min(num_items, 16),), generator=generator)
    targets, negatives = targets.to(output.device), negatives.to(output.device)
    scores = teacher.candidate_scores(output, targets, negatives)
    expected_target = logits.gather(1, targets[:, None]).squeeze(1)
    if not (
        torch.allclose(scores.target, expected_target, atol=1e-4)
        and torch.allclose(scores.negatives, logits[:, negatives], atol=1e-4)
    ):
        raise UserError(
            "the teacher's candidate_scores disagree with its logits on the same items; "
            "the sampled-softmax distillation reads candidate_scores (remove it to have "
            "logits gathered instead)"
        )


def _require_finite(what: str, tensor: torch.Tensor, scores: bool) -> None:
    """UserError if a probe output holds NaN or inf (``scores``: over padding + items, where
    column 0, padding, is ignored and may be -inf)."""
    values = tensor[..., 1:] if scores else tensor
    if not torch.isfinite(values).all():
        raise UserError(
            f"the teacher is not finite: {what} holds NaN or inf on a probe batch; a "
            "student distilled from it would learn NaN (check the teacher's weights)"
        )


# Probe outputs compared per forward of the causality check: about 2^24 floats (64 MB).
PROBE_FLOATS = 2**24


def _check_causal(
    teacher: nn.Module, items: torch.Tensor, outputs: dict[str, torch.Tensor], num_items: int
) -> None:
    """UserError unless changing the item at any position p leaves the outputs at every
    position before p unchanged. Every position is probed, each in a copy of the probe
    batch of its own: a teacher that looks ahead only at some positions (e.g. not at the
    last two) is caught too."""
    batch, max_len = items.shape
    positions = torch.arange(1, max_len, device=items.device)
    variants = items.repeat(len(positions), 1)  # [positions * batch, max_len]
    changed_at = positions.repeat_interleave(batch)
    rows = torch.arange(len(variants), device=items.device)
    variants[rows, changed_at] = variants[rows, changed_at] % num_items + 1
    width = max(t.shape[-1] for t in outputs.values())
    # Whole copies of the probe batch per forward: row i of every chunk changes history
    # i % batch.
    chunk = batch * max(1, PROBE_FLOATS // (max_len * width * batch))
    unchanged: dict[int, dict[str, torch.Tensor]] = {}
    for start in range(0, len(variants), chunk):
        part = slice(start, start + chunk)
        rows_here = len(variants[part])
        # Compared with the unchanged batch in a forward of the same shape: kernels may
        # sum in another order for another batch size (TF32 on a GPU).
        if rows_here not in unchanged:
            unchanged[rows_here] = _outputs(teacher, items.repeat(rows_here // batch, 1))
        # earlier[i, t]: position t comes before the change of variant i.
        earlier = torch.arange(max_len, device=items.device) < changed_at[part, None]
        for name, tensor in _outputs(teacher, variants[part]).items():
            _require_finite(f"its {name}", tensor, scores=name == "logits")
            base = unchanged[rows_here][name]
            same = torch.isclose(tensor, base, atol=1e-5, rtol=1e-5).all(dim=-1)
            leaks = earlier & ~same
            if leaks.any():
                variant, position = (int(v) for v in leaks.nonzero()[0])
                raise UserError(
                    f"the teacher is not causal: its {name} at position {position} changes "
                    f"with the item at position {int(changed_at[part][variant])}; a teacher "
                    "must see only items up to each position (it would hand the student "
                    "the next item)"
                )


def check_teacher(teacher: nn.Module, num_items: int, max_len: int) -> None:
    """UserError unless ``teacher`` follows ``TeacherProtocol`` for this catalogue and window.

    One probe batch checks the shapes, that the outputs are finite, and causality: changing
    the item at any position must leave every earlier position's outputs unchanged (a probe,
    not a proof). Train/eval mode is restored afterwards.
    """
    if not isinstance(teacher, nn.Module):
        raise UserError(f"a teacher must be a torch.nn.Module; got {type(teacher).__name__}")
    missing = [
        name
        for name in ("hidden_size", "logits", "full_sort_predict")
        if not hasattr(teacher, name)
    ]
    if missing:
        raise UserError(
            f"the teacher {type(teacher).__name__} lacks {', '.join(missing)}; a teacher "
            "follows adarec.models.teacher_protocol.TeacherProtocol"
        )
    width = teacher.hidden_size
    param = next(teacher.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    items = _probe(num_items, max_len, device)
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            outputs = _outputs(teacher, items)
            expected = {name: (2, max_len, width) for name in outputs}
            expected["logits"] = (2, max_len, num_items + 1)
            for name, tensor in outputs.items():
                if tuple(tensor.shape) != expected[name]:
                    raise UserError(
                        f"the teacher's {name} has shape {tuple(tensor.shape)}, expected "
                        f"{expected[name]} ([batch, max_len, hidden_size {width}], logits "
                        f"over padding + {num_items} items)"
                    )
                _require_finite(f"its {name}", tensor, scores=name == "logits")
            if hasattr(teacher, "candidate_scores"):
                _check_candidate_scores(teacher, outputs, items, num_items)
            scores = teacher.full_sort_predict(items)
            if tuple(scores.shape) != (2, num_items + 1):
                raise UserError(
                    f"the teacher's full_sort_predict has shape {tuple(scores.shape)}, "
                    f"expected (2, {num_items + 1}) (scores at the last position)"
                )
            _require_finite("its full_sort_predict", scores, scores=True)
            _check_causal(teacher, items, outputs, num_items)
    finally:
        teacher.train(was_training)
