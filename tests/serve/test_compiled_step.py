"""The compiled per-event step: exact against the PyTorch forward for any student."""

import random

import numpy as np
import pytest
import torch

from adarec.errors import UserError
from adarec.nas.compiled_step import OPCODES, CompiledStep, run_events
from adarec.nas.genotype import Genotype, random_genotype
from adarec.nas.operations import CAUSAL_OPS, make_op, step_spec
from adarec.nas.student import Student
from adarec.serve.catalogue import ExactCatalogue
from adarec.serve.events import EventService
from adarec.serve.predictor import Predictor
from adarec.serve.state_store import MemoryStore, model_tag
from adarec.serve.streaming import CompiledStudentStreamer, streamer_for

NUM_ITEMS = 40
MAX_LEN = 12


def _student(genotype: Genotype, positions: str = "absolute", seed: int = 0) -> Student:
    """An eval-mode student whose norms and node weights are not at their initial values
    (LayerNorm's (1, 0) would hide a wrong affine)."""
    torch.manual_seed(seed)
    model = Student(NUM_ITEMS, MAX_LEN, genotype, positions=positions).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    return model


def _genotypes() -> list[Genotype]:
    """Random cells of 1-3 cells and widths 8-16 that together hold every causal op."""
    return [
        random_genotype("causal", 4, cells, width, seed)
        for seed, (cells, width) in enumerate([(1, 8), (2, 16), (3, 8), (2, 12), (1, 16)])
    ]


def _reference(model: Student, history: list[int]) -> torch.Tensor:
    """What ``/recommend`` serves: full_sort_predict of the last max_len items."""
    with torch.no_grad():
        scores = model.full_sort_predict(torch.tensor([history[-MAX_LEN:]]))[0]
    scores[0] = float("-inf")
    return scores


def test_every_causal_op_has_a_compiled_step():
    # An op added to the causal set without a step (and an opcode) fails here.
    for name in CAUSAL_OPS:
        if name == "none":  # absent from students
            continue
        spec = step_spec(make_op(name, 8, "causal"))
        assert spec.kind in OPCODES
    with pytest.raises(UserError, match="per event"):
        step_spec(make_op("none", 8, "causal"))
    with pytest.raises(UserError, match="next position"):
        step_spec(make_op("max_pool3", 8, "paper"))


def test_random_genotypes_cover_every_op():
    used = {op for g in _genotypes() for node in g.nodes for _, op in node}
    assert used >= set(CAUSAL_OPS) - {"none"}


@pytest.mark.parametrize("positions", ["absolute", "none"])
@pytest.mark.parametrize("index", range(5))
def test_compiled_events_equal_the_forward_past_max_len(index, positions):
    model = _student(_genotypes()[index], positions, seed=index)
    compiled = CompiledStudentStreamer(model)
    reference = streamer_for(model, "torch")
    rng = random.Random(index)
    history = [rng.randint(1, NUM_ITEMS) for _ in range(3 * MAX_LEN)]
    state = compiled.init_state()
    for t, item in enumerate(history):
        old, kept = state, [tensor.clone() for tensor in state.tensors]
        state, ids, scores = compiled.advance_top_k(state, item, 5)
        assert all(torch.equal(a, b) for a, b in zip(old.tensors, kept, strict=True))
        expected = _reference(model, history[: t + 1])
        values, indices = torch.topk(expected, 5)
        assert ids == indices.tolist(), f"event {t}"
        assert np.abs(np.array(scores) - values.numpy()).max() <= 1e-5
        assert torch.allclose(state.output, reference.rebuild(history[: t + 1]).output, atol=1e-5)
    assert state.events == len(history)
    # Re-encodes exactly when the PyTorch reference does (absolute positions past max_len,
    # or a receptive field wider than max_len), never otherwise.
    assert compiled.reencodes == (
        0 if compiled.exact_events is None else len(history) - compiled.exact_events
    )
    assert compiled.exact_events == reference.exact_events


def test_a_student_without_positions_streams_past_max_len_without_reencoding():
    genotype = Genotype("causal", (((0, "causal_conv3"),), ((1, "causal_max_pool3"),)), 2, 8)
    model = _student(genotype, "none")
    streamer = CompiledStudentStreamer(model)
    assert streamer.exact_events is None
    rng = random.Random(1)
    history = [rng.randint(1, NUM_ITEMS) for _ in range(5 * MAX_LEN)]
    state = streamer.init_state()
    for t, item in enumerate(history):
        state, ids, _ = streamer.advance_top_k(state, item, 3)
        assert ids == torch.topk(_reference(model, history[: t + 1]), 3).indices.tolist()
    assert streamer.reencodes == 0


@pytest.mark.parametrize("positions", ["absolute", "none"])
def test_rebuild_then_continue_is_exact(positions):
    model = _student(_genotypes()[1], positions, seed=3)
    streamer = CompiledStudentStreamer(model)
    rng = random.Random(2)
    history = [rng.randint(1, NUM_ITEMS) for _ in range(2 * MAX_LEN)]
    for cut in (0, 1, 5, MAX_LEN - 1, MAX_LEN, MAX_LEN + 3):
        state = streamer.rebuild(history[:cut])
        assert state.events == cut
        for t in range(cut, cut + 4):
            state, ids, _ = streamer.advance_top_k(state, history[t], 4)
            expected = torch.topk(_reference(model, history[: t + 1]), 4).indices.tolist()
            assert ids == expected, f"cut {cut}, event {t}"


def test_a_step_leaves_the_old_state_alone():
    model = _student(_genotypes()[0])
    step = CompiledStep(model)
    state = np.random.default_rng(0).random(step.initial_state().shape).astype(np.float32)
    kept = state.copy()
    new_state, *_ = step.run(state, np.array([3]), 0, 5)
    assert np.array_equal(state, kept) and not np.array_equal(new_state, kept)


def test_the_kernel_is_compiled_at_load_not_on_the_first_request():
    CompiledStep(_student(_genotypes()[0]))
    assert run_events.signatures  # compiled (or loaded from the disk cache) already


def test_rank_and_batch_scores_equal_the_forward_with_seen_items_excluded():
    model = _student(_genotypes()[2], seed=5)
    step = CompiledStep(model)
    rng = random.Random(3)
    for length in (1, 4, MAX_LEN, 2 * MAX_LEN):
        history = [rng.randint(1, NUM_ITEMS) for _ in range(length)]
        expected = _reference(model, history)
        assert step.rank(history, 6)[0] == torch.topk(expected, 6).indices.tolist()
        expected[history] = float("-inf")
        assert step.rank(history, 6, history)[0] == torch.topk(expected, 6).indices.tolist()
        padded = torch.tensor([[0] * (MAX_LEN - len(history[-MAX_LEN:])) + history[-MAX_LEN:]])
        scores = step.scores(padded)[0]
        assert torch.allclose(scores[1:], _reference(model, history)[1:], atol=1e-5)


def test_top_k_returns_fewer_when_too_few_items_are_left():
    model = _student(_genotypes()[0])
    step = CompiledStep(model)
    everything_but_two = list(range(3, NUM_ITEMS + 1))
    ids, _ = step.rank([1, 2, 3], 5, everything_but_two)
    assert sorted(ids) == [1, 2]


def test_the_paper_op_set_is_refused():
    genotype = Genotype("paper", (((0, "conv3"),),), 1, 8)
    with pytest.raises(UserError, match="next position"):
        CompiledStep(Student(NUM_ITEMS, MAX_LEN, genotype).eval())


def test_compiled_and_torch_states_carry_different_tags():
    model = _student(_genotypes()[0])
    assert model_tag(model, "compiled") != model_tag(model, "torch") == model_tag(model)


def test_a_student_run_is_served_compiled_by_default(runs):
    compiled = Predictor.from_run(runs["student-causal"])
    eager = Predictor.from_run(runs["student-causal"], "eager")
    assert compiled.info["backend"] == "compiled" and eager.info["backend"] == "eager"
    items = compiled.item_ids[1:]
    rng = random.Random(4)
    # Batch-1 requests take the faster of the step and the graph (timed at load): both
    # answer the same.
    assert set(compiled.compiled.timings_us) == {"compiled step", "torchscript"}
    for step_for_one in (True, False):
        compiled.compiled.step_for_one = step_for_one
        for length in (1, 3, 25):
            history = [rng.choice(items) for _ in range(length)]
            for exclude in (False, True):
                got = compiled.recommend(history, 5, exclude)
                want = eager.recommend(history, 5, exclude)
                assert got["items"] == want["items"]
                assert np.allclose(got["scores"], want["scores"], atol=1e-5)
    # A batch goes through PyTorch (faster there) and answers the same.
    batch = [[rng.choice(items) for _ in range(6)] for _ in range(3)]
    assert [r["items"] for r in compiled.recommend_batch(batch, 4)] == [
        r["items"] for r in eager.recommend_batch(batch, 4)
    ]


def test_teachers_stay_eager_and_refuse_the_compiled_backend(runs):
    assert Predictor.from_run(runs["sasrec"]).info["backend"] == "eager"
    with pytest.raises(UserError, match="compiled backend serves AdaRec students"):
        Predictor.from_run(runs["sasrec"], "compiled")


def test_compiled_events_answer_like_the_torch_events(runs):
    predictor = Predictor.from_run(runs["student-causal"])
    model = predictor.model

    def answers(streamer) -> list:
        service = EventService(predictor, streamer, MemoryStore(100, 10**8), ExactCatalogue(model))
        rng = random.Random(5)
        out = []
        for _ in range(30):
            item = rng.choice(predictor.item_ids[1:])
            out.append(asyncio_run(service.event("u", item, 5, history=None if out else [])))
        return out

    compiled = answers(CompiledStudentStreamer(model, predictor.compiled.step))
    torch_answers = answers(streamer_for(model, "torch"))
    for got, want in zip(compiled, torch_answers, strict=True):
        assert got["items"] == want["items"] and got["events"] == want["events"]
        assert np.allclose(got["scores"], want["scores"], atol=1e-5)


def asyncio_run(coroutine):
    import asyncio

    return asyncio.run(coroutine)
