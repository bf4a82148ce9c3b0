"""Sampled softmax: the loss and its gradients by hand, the full softmax as its limit, KD on
the sampled candidates, the stages and a pipeline run over sampled candidates."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adarec.config import DistillConfig, LoopConfig, SampledSoftmaxConfig
from adarec.distill.losses import candidate_kd_loss, logit_kd_loss
from adarec.errors import UserError
from adarec.models.base import CandidateScores, head_scores
from adarec.models.bert4rec import mask_items
from adarec.models.pop import Popularity
from adarec.models.sasrec import SASRec
from adarec.models.teacher_protocol import check_teacher
from adarec.pipeline.search import run_search
from adarec.pipeline.student import run_student
from adarec.pipeline.teacher import train_teacher
from adarec.train.distill_stage import DistillStage
from adarec.train.losses import next_item_loss
from adarec.train.sampled import (
    NegativeSampler,
    corrected_logits,
    make_sampler,
    proposal_weights,
    sampled_next_item_loss,
)
from adarec.train.supervised import SupervisedStage, next_item_batch
from tests.conftest import tiny_config
from tests.models.helpers import MAX_LEN, NUM_ITEMS, tiny_model


class RecordingSampler(NegativeSampler):
    """A real sampler that keeps its last draw, so a test can recompute the step."""

    def draw(self) -> torch.Tensor:
        self.last = super().draw()
        return self.last


def _windows(batch: int, seed: int = 0) -> torch.Tensor:
    """Left-padded training windows [batch, MAX_LEN + 1] of real items."""
    generator = torch.Generator().manual_seed(seed)
    windows = torch.randint(1, NUM_ITEMS + 1, (batch, MAX_LEN + 1), generator=generator)
    windows[0, :4] = 0  # one padded history
    return windows


# -- the loss by hand ---------------------------------------------------------------------


def test_sampled_loss_and_gradients_match_a_hand_computation():
    torch.manual_seed(0)
    weights = np.arange(7, dtype=np.float64)  # q(y) = y / 21 over items 1..6
    sampler = NegativeSampler(weights, negatives=4)
    layer = nn.Linear(5, 7).double()
    output = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([2, 5, 1])
    negatives = torch.tensor([5, 3, 3, 6])  # 5 is row 1's target (a hit); 3 twice

    loss = sampled_next_item_loss(
        head_scores(output, layer, targets, negatives), targets, negatives, sampler
    )
    loss.backward()

    q = weights / weights.sum()
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    o = output.detach().numpy()
    total, grad_o = 0.0, np.zeros_like(o)
    grad_w, grad_b = np.zeros_like(w), np.zeros_like(b)
    for p, target in enumerate(targets.tolist()):
        items = [target] + [n for n in negatives.tolist() if n != target]
        z = np.array([o[p] @ w[y] + b[y] - math.log(4 * q[y]) for y in items])
        soft = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        total += -math.log(soft[0])
        for j, y in enumerate(items):
            coefficient = (soft[j] - (j == 0)) / 3
            grad_o[p] += coefficient * w[y]
            grad_w[y] += coefficient * o[p]
            grad_b[y] += coefficient
    # The correction is kept in float32: agreement to its precision.
    assert loss.item() == pytest.approx(total / 3, rel=1e-6)
    np.testing.assert_allclose(output.grad.numpy(), grad_o, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer.weight.grad.numpy(), grad_w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer.bias.grad.numpy(), grad_b, rtol=1e-5, atol=1e-7)
    # Only the rows of targets and negatives receive gradient (0, 4 are neither).
    assert not layer.weight.grad[[0, 4]].any()


def _every_item_uniform(num_items: int) -> tuple[NegativeSampler, torch.Tensor]:
    """Uniform proposal with each item drawn once: the candidates are the catalogue."""
    sampler = NegativeSampler(np.ones(num_items + 1), negatives=num_items)
    return sampler, torch.arange(1, num_items + 1)


@pytest.mark.parametrize("name", ["nextitnet", "sasrec", "bert4rec_causal"])
def test_with_the_whole_catalogue_as_negatives_it_is_the_full_softmax(name):
    """Uniform log-Q is one constant and the target's own copy is a masked hit: the
    candidates are then exactly the items, and loss and gradients are the full ones."""
    model = tiny_model(name)
    inputs, targets = next_item_batch(_windows(4), 0, 0)
    sampler, negatives = _every_item_uniform(NUM_ITEMS)
    out = model(inputs).output
    mask = targets > 0
    full = next_item_loss(model.item_logits(out), targets)
    scores = model.candidate_scores(out[mask], targets[mask], negatives)
    sampled = sampled_next_item_loss(scores, targets[mask], negatives, sampler)
    assert sampled.item() == pytest.approx(full.item(), rel=1e-5)
    full_grad = torch.autograd.grad(full, model.output_layer.weight, retain_graph=True)[0]
    sampled_grad = torch.autograd.grad(sampled, model.output_layer.weight)[0]
    torch.testing.assert_close(sampled_grad, full_grad, rtol=1e-4, atol=1e-6)


def test_empty_batch_gives_an_attached_zero():
    sampler, negatives = _every_item_uniform(5)
    output = torch.zeros(0, 3, requires_grad=True)
    loss = sampled_next_item_loss(
        head_scores(output, nn.Linear(3, 6), torch.zeros(0, dtype=torch.long), negatives),
        torch.zeros(0, dtype=torch.long),
        negatives,
        sampler,
    )
    assert loss.item() == 0.0 and loss.requires_grad


# -- the proposal and the sampler ---------------------------------------------------------


def test_sampler_draws_items_at_the_proposal_frequencies():
    torch.manual_seed(0)
    weights = np.array([50.0, 1.0, 2.0, 3.0, 4.0])  # padding's weight is ignored
    sampler = NegativeSampler(weights, negatives=100_000)
    draws = sampler.draw()
    assert draws.min() >= 1 and draws.max() <= 4
    frequencies = torch.bincount(draws, minlength=5)[1:].double() / len(draws)
    torch.testing.assert_close(
        frequencies, torch.tensor([0.1, 0.2, 0.3, 0.4]).double(), atol=5e-3, rtol=0
    )
    expected = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]) * 100_000)
    torch.testing.assert_close(sampler.log_expected[1:], expected)


def test_proposal_weights_and_the_threshold():
    counts = np.array([0, 0, 3, 8])  # item 1 never in training: still drawable
    popular = SampledSoftmaxConfig(min_items=3, proposal="popularity", power=0.5)
    np.testing.assert_allclose(proposal_weights(popular, counts), [1.0, 1.0, 2.0, 3.0])
    uniform = SampledSoftmaxConfig(proposal="uniform")
    np.testing.assert_allclose(proposal_weights(uniform, counts), np.ones(4))
    assert make_sampler(SampledSoftmaxConfig(min_items=4), counts) is None  # 3 items
    sampler = make_sampler(popular, counts)
    assert sampler is not None and sampler.negatives == popular.negatives
    torch.testing.assert_close(sampler.probs[1:], torch.tensor([1.0, 2.0, 3.0]) / 6)


def test_a_proposal_without_mass_on_an_item_is_refused():
    with pytest.raises(ValueError, match="positive"):
        NegativeSampler(np.array([0.0, 1.0, 0.0]), negatives=2)


@pytest.mark.parametrize(
    "override",
    [
        "sampled_softmax.negatives=0",
        "sampled_softmax.min_items=-1",
        "sampled_softmax.power=-0.5",
        "sampled_softmax.proposal=zipf",
    ],
)
def test_bad_settings_are_one_user_error(override):
    with pytest.raises(UserError, match=override.split("=")[0].replace(".", r"\.")):
        tiny_config(override)


# -- distillation on the sampled candidates -----------------------------------------------


def test_candidate_kd_matches_a_hand_kl_and_ignores_accidental_hits():
    torch.manual_seed(0)
    sampler = NegativeSampler(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), negatives=3)
    targets, negatives = torch.tensor([1, 4]), torch.tensor([2, 4, 4])
    student = CandidateScores(torch.randn(2, requires_grad=True), torch.randn(2, 3))
    teacher = CandidateScores(torch.randn(2), torch.randn(2, 3))
    tau = 2.0
    s_logits = corrected_logits(student, targets, negatives, sampler, tau)
    t_logits = corrected_logits(teacher, targets, negatives, sampler, tau)
    loss = candidate_kd_loss(s_logits, t_logits, tau)
    loss.backward()
    assert torch.isfinite(student.target.grad).all()

    log_q = torch.log(torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4]) * 3)
    expected = 0.0
    for p, target in enumerate(targets.tolist()):
        keep = [j for j, n in enumerate(negatives.tolist()) if n != target]
        items = [target] + [negatives[j].item() for j in keep]

        def dist(scores, p=p, keep=keep, items=items):
            z = torch.cat([scores.target[p : p + 1], scores.negatives[p, keep]]).detach()
            return F.softmax(z / tau - log_q[items], dim=0)

        t, s = dist(teacher), dist(student)
        expected += float((t * (t.log() - s.log())).sum())
    assert loss.item() == pytest.approx(expected / 2 * tau**2, rel=1e-5)


def test_candidate_kd_over_the_whole_catalogue_is_the_full_kd():
    torch.manual_seed(1)
    sampler, negatives = _every_item_uniform(6)
    student_full, teacher_full = torch.randn(5, 6), torch.randn(5, 6)
    targets = torch.tensor([1, 3, 6, 2, 2])
    columns = negatives - 1

    def scores(full):
        return CandidateScores(full.gather(1, (targets - 1)[:, None]).squeeze(1), full[:, columns])

    tau = 1.7
    sampled = candidate_kd_loss(
        corrected_logits(scores(student_full), targets, negatives, sampler, tau),
        corrected_logits(scores(teacher_full), targets, negatives, sampler, tau),
        tau,
    )
    full = logit_kd_loss(student_full, teacher_full, torch.ones(5, dtype=torch.bool), tau)
    assert sampled.item() == pytest.approx(full.item(), rel=1e-5)


def _no_dropout_sasrec(seed: int, hidden: int) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(NUM_ITEMS, MAX_LEN, hidden_size=hidden, num_heads=2, inner_size=16, dropout=0.0)


def test_distillation_step_scores_teacher_and_student_on_the_same_candidates():
    """The stage's CE and logit terms equal the ones recomputed from the models' full
    logits on the draw it made: the teacher is matched on the student's candidates."""
    teacher, student = _no_dropout_sasrec(0, 16), _no_dropout_sasrec(1, 8)
    distill = DistillConfig(use_emb=False, use_hid=False, kd_temperature=2.0)
    sampler = RecordingSampler(np.arange(NUM_ITEMS + 1) + 1.0, negatives=6)
    stage = DistillStage(
        student, teacher, distill, LoopConfig(), torch.device("cpu"), 0, sampler=sampler
    )
    inputs, targets = next_item_batch(_windows(4), 0, 0)
    torch.manual_seed(3)
    terms = stage.loss_terms(inputs, targets, None)
    negatives, mask = sampler.last, targets > 0
    real = targets[mask]

    def gathered(model):
        logits = model.logits(model(inputs).output)[mask]
        return CandidateScores(logits.gather(1, real[:, None]).squeeze(1), logits[:, negatives])

    with torch.no_grad():
        s, t = gathered(student), gathered(teacher)
    ce = sampled_next_item_loss(s, real, negatives, sampler)
    kd = candidate_kd_loss(
        corrected_logits(s, real, negatives, sampler, 2.0),
        corrected_logits(t, real, negatives, sampler, 2.0),
        2.0,
    )
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert terms["logit"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert terms["logit"].item() > 0


@pytest.mark.parametrize("name", ["nextitnet", "sasrec", "bert4rec_causal", "pop"])
def test_candidate_scores_are_the_columns_of_the_logits(name):
    if name == "pop":
        model = Popularity(NUM_ITEMS).fit(np.arange(NUM_ITEMS + 1))
    else:
        model = tiny_model(name)
    output = model(_windows(3)[:, :-1]).output.reshape(3 * MAX_LEN, -1)
    targets = torch.randint(1, NUM_ITEMS + 1, (len(output),))
    negatives = torch.tensor([4, 1, 4, NUM_ITEMS])
    scores = model.candidate_scores(output, targets, negatives)
    logits = model.logits(output)
    torch.testing.assert_close(scores.target, logits.gather(1, targets[:, None]).squeeze(1))
    torch.testing.assert_close(scores.negatives, logits[:, negatives])


def test_a_teacher_whose_candidate_scores_disagree_with_its_logits_is_refused():
    class Shifted(nn.Module):
        """A per-position teacher whose candidate_scores are off by one."""

        hidden_size = 8

        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(NUM_ITEMS + 1, 8)
            self.head = nn.Linear(8, NUM_ITEMS + 1)

        def forward(self, items):
            from adarec.models.base import SeqOutput

            x = self.embed(items)
            return SeqOutput(x, [x], x)

        def logits(self, output):
            return self.head(output)

        def full_sort_predict(self, items):
            return self.logits(self.forward(items).output[:, -1])

        def candidate_scores(self, output, targets, negatives):
            scores = head_scores(output, self.head, targets, negatives)
            return CandidateScores(scores.target + 1.0, scores.negatives)

    with pytest.raises(UserError, match="candidate_scores disagree"):
        check_teacher(Shifted(), NUM_ITEMS, MAX_LEN)
    fixed = Shifted()
    fixed.candidate_scores = lambda o, t, n: head_scores(o, fixed.head, t, n)
    check_teacher(fixed, NUM_ITEMS, MAX_LEN)


# -- the stages and a run -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["nextitnet", "sasrec", "bert4rec_masked"])
def test_a_sampled_step_touches_only_the_candidates_rows(name):
    """One step: finite loss, and the output layer's gradient only on the rows of the
    step's targets and negatives (no [B, L, N] product was taken)."""
    model = copy.deepcopy(tiny_model("bert4rec_bidirectional" if "bert" in name else name))
    sampler = RecordingSampler(np.ones(NUM_ITEMS + 1), negatives=3)
    make_batch = None
    if name == "bert4rec_masked":

        def make_batch(window, epoch, step):
            generator = torch.Generator().manual_seed(step)
            return mask_items(window[:, 1:], 0.2, model.mask_token, NUM_ITEMS, generator)

    stage = SupervisedStage(
        model,
        LoopConfig(clip_grad=0.0),
        torch.device("cpu"),
        make_batch=make_batch,
        sampler=sampler,
    )
    window = _windows(2)
    _, targets = (make_batch or next_item_batch)(window, 0, 0)
    before = model.output_layer.weight.detach().clone()
    values = stage.train_step(window, 0, 0)
    assert math.isfinite(values["loss"]) and values["loss"] > 0
    grad = model.output_layer.weight.grad
    touched = set(torch.nonzero(grad.abs().sum(1)).flatten().tolist())
    allowed = set(targets[targets > 0].tolist()) | set(sampler.last.tolist())
    assert touched and touched <= allowed
    untouched = sorted(set(range(NUM_ITEMS + 1)) - allowed)
    assert torch.equal(model.output_layer.weight[untouched].detach(), before[untouched])
    # The catalogue's optimizer pass is the one cost left that grows with N: fused.
    assert stage.optimizer.defaults["fused"]
    full = SupervisedStage(copy.deepcopy(model), LoopConfig(), torch.device("cpu"))
    assert not full.optimizer.defaults["fused"]  # full-softmax runs keep their numbers


def test_search_and_kd_retraining_run_on_sampled_candidates(tmp_path: Path):
    """The search (supernet, architect, every distillation term) and the student's KD
    retraining, each drawing its negatives, run end to end and rank the whole catalogue."""
    sampled = ["sampled_softmax.min_items=0", "sampled_softmax.negatives=8"]
    fast = ["model.name=sasrec", "train.epochs=1", "search.epochs=1", "student.epochs=1"]
    cfg = tiny_config(*fast, *sampled, "student.loss=kd")
    train_teacher(cfg, tmp_path / "teacher", quiet=True)
    run_search(cfg, tmp_path / "search", tmp_path / "teacher", quiet=True)
    metrics = run_student(cfg, tmp_path / "student", tmp_path / "search", quiet=True)
    assert metrics["test"]["full"]["HR@20"] > 0
    history = json.loads((tmp_path / "search" / "history.json").read_text())
    assert all(math.isfinite(history[0][term]) for term in ("ce", "emb", "hid", "logit"))


def test_a_teacher_run_trains_on_sampled_candidates_and_evaluates_in_full(tmp_path: Path):
    cfg = tiny_config(
        "model.name=sasrec", "sampled_softmax.min_items=0", "sampled_softmax.negatives=8"
    )
    metrics = train_teacher(cfg, tmp_path / "run", quiet=True)
    assert 0.0 <= metrics["test"]["full"]["NDCG@10"] <= 1.0
    assert metrics["test"]["full"]["HR@20"] > 0
