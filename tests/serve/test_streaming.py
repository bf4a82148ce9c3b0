"""Per-event inference equals a full recomputation of the same history, after every event."""

import random

import numpy as np
import pytest
import torch

from adarec.data.splits import left_pad
from adarec.errors import UserError
from adarec.nas.genotype import Genotype, random_genotype
from adarec.nas.student import Student
from adarec.serve.streaming import (
    ForeignState,
    StreamState,
    extend_digest,
    history_digest,
    streamer_for,
)
from tests.models.helpers import tiny_model
from tests.nas.helpers import add_noise

NUM_ITEMS = 30
TOLERANCE = 1e-4


def full_scores(model, history: list[int]) -> torch.Tensor:
    """What the predictor serves: the last max_len items, left-padded, full_sort_predict."""
    window = torch.from_numpy(left_pad([np.asarray(history)], model.max_len))
    with torch.inference_mode():
        return model.full_sort_predict(window)[0]


def replay(model, history: list[int]) -> list[float]:
    """Stream ``history`` event by event; the max |streamed - full| after each event."""
    streamer = streamer_for(model)
    state = streamer.init_state()
    errors = []
    for t, item in enumerate(history):
        state, scores = streamer.step(state, item)
        assert state.events == t + 1
        errors.append((scores - full_scores(model, history[: t + 1])).abs().max().item())
    return errors


def random_student(seed: int, max_len: int = 12, positions: str = "absolute") -> Student:
    rng = random.Random(seed)
    genotype = random_genotype(
        "causal", nodes=rng.randint(1, 4), cells=rng.randint(1, 3), width=8, seed=seed
    )
    # Random edges may also be "none": the student must skip them.
    nodes = tuple(
        tuple((i, "none" if rng.random() < 0.2 else op) for i, op in node)
        for node in genotype.nodes
    )
    genotype = Genotype("causal", nodes, genotype.cells, genotype.width)
    torch.manual_seed(seed)
    student = Student(NUM_ITEMS, max_len, genotype, dropout=0.0, positions=positions)
    return add_noise(student, seed).eval()


def random_history(seed: int, length: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, NUM_ITEMS + 1, (length,), generator=generator).tolist()


@pytest.mark.parametrize("seed", range(12))
def test_student_streams_exactly_on_random_genotypes(seed):
    student = random_student(seed)
    # Longer than max_len (12): the last events re-encode the receptive field.
    history = random_history(seed, 30)
    assert max(replay(student, history)) <= TOLERANCE


def test_student_leaves_out_edges_that_only_see_zeros():
    """node_0 is all "none": pools and skips of it are zero and left out; a convolution of
    it is not zero (its LayerNorm adds a bias) and is kept; node_3 is zero as a whole."""
    nodes = (
        ((0, "none"),),
        ((0, "causal_max_pool3"), (1, "skip")),
        ((0, "skip"), (1, "causal_conv3"), (2, "causal_avg_pool3")),
        ((0, "none"), (1, "causal_max_pool3"), (2, "none"), (3, "none")),
    )
    genotype = Genotype("causal", nodes, cells=2, width=8)
    torch.manual_seed(0)
    student = add_noise(Student(NUM_ITEMS, 12, genotype, dropout=0.0), 0).eval()
    for cell in student.cells:
        assert cell.step_edges == [
            [],
            [(0, "causal_max_pool3")],
            [(0, "skip"), (1, "causal_conv3"), (2, "causal_avg_pool3")],
            [],
        ]
        assert cell.step_live == [1, 2]
    assert max(replay(student, random_history(7, 20))) <= TOLERANCE


def test_student_reencodes_past_max_len_only():
    student = random_student(3, max_len=12)
    streamer = streamer_for(student)
    state = streamer.init_state()
    for item in random_history(0, 20):
        state = streamer.advance(state, item)
        if state.events <= 12:
            assert state.tensors or not any(student.cells[0].queue_lengths)
    assert streamer.reencodes == 8
    assert state.tensors == [] and len(state.recent) == min(student.window, 12)


def student_without_positions(seed: int) -> Student:
    """A random student without positions whose receptive field just fits in max_len."""
    window = random_student(seed).window
    return random_student(seed, max_len=window, positions="none")


@pytest.mark.parametrize("seed", range(8))
def test_student_without_positions_streams_exactly_forever(seed):
    student = student_without_positions(seed)
    streamer = streamer_for(student)
    assert streamer.exact_events is None and streamer.keep == 0
    # Three windows: every event past max_len steps from the queues, as within it.
    history = random_history(seed, 3 * student.max_len)
    assert max(replay(student, history)) <= TOLERANCE
    state = streamer.init_state()
    for item in history:
        state = streamer.advance(state, item)
        assert state.tensors or not any(student.cells[0].queue_lengths)
    assert streamer.reencodes == 0 and state.recent == []


def test_student_without_positions_reencodes_when_its_field_exceeds_max_len():
    student = random_student(3, max_len=12, positions="none")
    assert student.window > 12  # the served window cuts the receptive field
    streamer = streamer_for(student)
    assert streamer.exact_events == 12 and streamer.keep == 12
    assert max(replay(student, random_history(3, 30))) <= TOLERANCE
    assert streamer_for(student).rebuild(random_history(3, 30)).tensors == []


# NextItNet's receptive field: 1 + 6 x the dilation per block (kernel 3, convs d and 2d).
NEXTITNET_FITS = {"num_blocks": 2, "dilations": [1, 1]}  # 13 <= max_len 16
NEXTITNET_WIDE = {"num_blocks": 2, "dilations": [1, 2]}  # 19 > 16


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("sasrec", {}),
        ("bert4rec_causal", {}),
        ("nextitnet", NEXTITNET_FITS),
        ("nextitnet", NEXTITNET_WIDE),
    ],
)
def test_teachers_stream_exactly(name, overrides):
    model = tiny_model(name, num_items=NUM_ITEMS, **overrides)  # max_len 16
    history = random_history(1, 40)
    assert max(replay(model, history)) <= TOLERANCE


def test_sasrec_reencodes_the_window_past_max_len():
    model = tiny_model("sasrec", num_items=NUM_ITEMS)
    streamer = streamer_for(model)
    state = streamer.init_state()
    for item in random_history(2, 20):
        state = streamer.advance(state, item)
    # 16 events from the key/value cache, then 4 re-encodes of the sliding window.
    assert streamer.reencodes == 4
    assert len(state.recent) == model.max_len and state.tensors == []


def test_nextitnet_streams_forever_when_its_receptive_field_fits():
    model = tiny_model("nextitnet", num_items=NUM_ITEMS, **NEXTITNET_FITS)
    streamer = streamer_for(model)
    assert streamer.receptive_field <= model.max_len and streamer.exact_events is None
    state = streamer.init_state()
    for item in random_history(3, 50):
        state = streamer.advance(state, item)
    assert streamer.reencodes == 0 and state.recent == []


def test_nextitnet_with_a_wide_receptive_field_reencodes_past_max_len():
    model = tiny_model("nextitnet", num_items=NUM_ITEMS, **NEXTITNET_WIDE)
    streamer = streamer_for(model)
    assert streamer.receptive_field == 19 > model.max_len
    history = random_history(4, 30)
    state = streamer.init_state()
    for item in history:
        state = streamer.advance(state, item)
    assert streamer.reencodes == 30 - model.max_len


@pytest.mark.parametrize("positions", ["absolute", "none"])
@pytest.mark.parametrize("length", [0, 1, 5, 12, 13, 40])
def test_rebuild_equals_streaming(length, positions):
    # Without positions (and a receptive field within max_len) nothing ever re-encodes.
    student = random_student(5) if positions == "absolute" else student_without_positions(5)
    streamer = streamer_for(student)
    history = random_history(5, length)
    state = streamer.init_state()
    for item in history:
        state = streamer.advance(state, item)
    rebuilt = streamer.rebuild(history)
    assert rebuilt.events == state.events == length
    if length:
        assert torch.allclose(rebuilt.output, state.output, atol=TOLERANCE)
        # The rebuilt state keeps streaming exactly.
        _, scores = streamer.step(rebuilt, 7)
        assert (scores - full_scores(student, history + [7])).abs().max() <= TOLERANCE
    if positions == "none":
        assert streamer.reencodes == 0


def test_state_stays_small():
    student = random_student(6)
    streamer = streamer_for(student)
    state = streamer.init_state()
    for item in random_history(6, 5):
        state = streamer.advance(state, item)
    queue_rows = sum(student.cells[0].queue_lengths) * len(student.cells)
    assert state.nbytes() == 4 * 8 * (queue_rows + 1) + 4 * len(state.recent)


def test_bidirectional_bert4rec_is_refused():
    with pytest.raises(UserError, match="bidirectionally"):
        streamer_for(tiny_model("bert4rec_bidirectional", num_items=NUM_ITEMS))


def test_paper_op_set_is_refused():
    genotype = random_genotype("paper", nodes=2, cells=1, width=8, seed=0)
    with pytest.raises(UserError, match="paper.*cannot be served per event"):
        streamer_for(Student(NUM_ITEMS, 12, genotype).eval())


def test_unknown_internal_id_is_a_programming_error():
    streamer = streamer_for(tiny_model("sasrec", num_items=NUM_ITEMS))
    with pytest.raises(ValueError, match="internal item id"):
        streamer.advance(StreamState(), NUM_ITEMS + 1)


def streamers_of_every_kind() -> list:
    """Every streamer: the student's two runtimes (with and without positions) and the
    teachers, each exact within max_len and (but for NEXTITNET_FITS) re-encoding past it."""
    students = [random_student(4), student_without_positions(4), random_student(4)]
    return [
        streamer_for(students[0], "torch"),
        streamer_for(students[0], "compiled"),
        streamer_for(students[1], "torch"),
        streamer_for(students[2], "compiled"),
        streamer_for(tiny_model("sasrec", num_items=NUM_ITEMS)),
        streamer_for(tiny_model("nextitnet", num_items=NUM_ITEMS, **NEXTITNET_FITS)),
        streamer_for(tiny_model("nextitnet", num_items=NUM_ITEMS, **NEXTITNET_WIDE)),
    ]


def test_the_history_digest_is_the_same_however_the_state_was_reached():
    history = random_history(8, 40)  # past every max_len here
    expected = [history_digest(history[:n]) for n in range(len(history) + 1)]
    folded = 0
    for n, item in enumerate(history):
        folded = extend_digest(folded, item, n)
        assert folded == expected[n + 1]
    for streamer in streamers_of_every_kind():
        state = streamer.init_state()
        assert state.digest == expected[0] == 0
        for n, item in enumerate(history):
            if n % 2:
                state = streamer.advance(state, item)
            else:
                state, _, _ = streamer.advance_top_k(state, item, 3)
            assert state.digest == expected[n + 1]
        for n in (0, 1, 5, 40):
            assert streamer.rebuild(history[:n]).digest == expected[n]


def test_the_digest_tells_histories_of_the_same_length_apart():
    history = random_history(9, 30)
    digests = {history_digest(history)}
    for position in range(len(history)):  # any one item changed
        changed = list(history)
        changed[position] = changed[position] % NUM_ITEMS + 1
        digests.add(history_digest(changed))
    digests.add(history_digest(history[1:] + history[:1]))  # the same items, reordered
    assert len(digests) == len(history) + 2


def test_check_state_accepts_every_state_its_streamer_writes():
    history = random_history(10, 30)
    for streamer in streamers_of_every_kind():
        streamer.check_state(streamer.init_state())
        state = streamer.init_state()
        for n, item in enumerate(history):
            state = streamer.advance(state, item)
            streamer.check_state(state)
            if n in (0, 11, 29):
                streamer.check_state(streamer.rebuild(history[: n + 1]))


def damaged(state: StreamState, how: str) -> StreamState:
    """``state`` with one inconsistency, as a damaged store could hold it."""
    tensors, output = list(state.tensors), state.output
    recent = list(state.recent)
    if how == "rows":
        tensors[0] = torch.zeros(tensors[0].size(0) + 1, tensors[0].size(1))
    elif how == "cols":
        tensors[-1] = torch.zeros(tensors[-1].size(0), tensors[-1].size(1) + 3)
    elif how == "fewer tensors":
        tensors = tensors[:-1]
    elif how == "more tensors":
        tensors.append(torch.zeros(2, output.numel()))
    elif how == "output":
        output = torch.zeros(output.numel() - 1)
    elif how == "no output":
        output = None
    elif how == "kept items":
        recent = recent + [1]
    elif how == "events":
        return StreamState(state.events + 1, recent, tensors, output, state.digest)
    return StreamState(state.events, recent, tensors, output, state.digest)


@pytest.mark.parametrize(
    "how",
    [
        "rows",
        "cols",
        "fewer tensors",
        "more tensors",
        "output",
        "no output",
        "kept items",
        "events",
    ],
)
def test_check_state_refuses_shapes_that_do_not_fit(how):
    for streamer in streamers_of_every_kind():
        if how == "events" and streamer.keep == 0:
            continue  # fixed-size queues and no kept items: any count fits them
        state = streamer.rebuild(random_history(11, 5))
        with pytest.raises(ForeignState):
            streamer.check_state(damaged(state, how))


def test_check_state_refuses_items_the_model_does_not_have():
    streamer = streamer_for(tiny_model("sasrec", num_items=NUM_ITEMS))
    state = streamer.rebuild(random_history(12, 20))  # past max_len: re-encodes recent
    state.recent[-1] = NUM_ITEMS + 1
    with pytest.raises(ForeignState, match="not this model's"):
        streamer.check_state(state)
