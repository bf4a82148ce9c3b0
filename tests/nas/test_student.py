"""The student: built from a genotype, inherits the supernet's weights, causal, traceable."""

import pytest
import torch

from adarec.errors import UserError
from adarec.models.layers import item_positions
from adarec.nas.genotype import Genotype, derive_genotype, random_genotype
from adarec.nas.student import Student, inherit_weights
from adarec.serve.export import ScorePredict
from tests.nas.helpers import (
    MAX_LEN,
    NUM_ITEMS,
    WIDTH,
    add_noise,
    all_states,
    change_after,
    left_pad,
    random_items,
    tiny_supernet,
)


def _searched(op_set: str):
    """A noisy supernet whose derived cell has a "none" edge, a conv and a pool, and its genotype.

    BatchNorm statistics (paper set) are moved off their initial values by training passes.
    """
    net = tiny_supernet(op_set)
    ops = net.op_names
    picks = {
        (0, 0): [o for o in ops if "conv5" in o][0],
        (1, 1): "none",
        (2, 0): [o for o in ops if "max_pool" in o][0],
        (2, 2): "skip",
    }
    with torch.no_grad():
        for (j, i), op in picks.items():
            net.alphas[j][i, ops.index(op)] += 3.0
        for seed in range(2):
            net(left_pad(random_items(4, MAX_LEN - 3, seed), 3))
    genotype = derive_genotype(list(net.alphas), ops, op_set, cells=2, width=WIDTH)
    assert genotype.nodes[1][1] == (1, "none")
    return net.eval(), genotype


def _assert_matches_derived_supernet(student: Student, supernet) -> None:
    """Every hidden state of ``student`` equals the derived supernet's on padded items."""
    student.eval()
    items = left_pad(random_items(3, MAX_LEN - 2, seed=5), 2)
    with torch.no_grad():
        expected = all_states(supernet, items, weights=supernet.derived_weights())
        got = all_states(student, items)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("op_set", ("causal", "paper"))
def test_inherited_student_matches_the_derived_supernet(op_set):
    supernet, genotype = _searched(op_set)
    student = Student(NUM_ITEMS, MAX_LEN, genotype, dropout=0.0)
    copied = inherit_weights(student, supernet)
    assert copied == len(student.state_dict()) > 0
    _assert_matches_derived_supernet(student, supernet)


def test_student_holds_only_the_chosen_ops():
    supernet, genotype = _searched("causal")
    student = Student(NUM_ITEMS, MAX_LEN, genotype)
    names = {name for name, _ in student.named_modules()}
    assert "cells.0.nodes.0.0.causal_conv5" in names
    assert not any(".nodes.1.1." in name for name in names)  # the "none" edge
    assert not any("causal_conv3" in name for name in names)
    assert sum(p.numel() for p in student.parameters()) < sum(
        p.numel() for p in supernet.weight_parameters()
    )


def _student(seed: int = 0) -> Student:
    torch.manual_seed(seed)
    genotype = Genotype(
        "causal",
        (
            ((0, "causal_dil_conv3"),),
            ((0, "causal_conv5"), (1, "causal_avg_pool3")),
            ((0, "none"), (1, "skip"), (2, "causal_max_pool3")),
        ),
        2,
        WIDTH,
    )
    return add_noise(Student(NUM_ITEMS, MAX_LEN, genotype, dropout=0.0), seed)


def test_student_never_sees_later_items():
    student = _student().train()
    items = random_items(3, MAX_LEN)
    for t in (0, 3, MAX_LEN - 2):
        with torch.no_grad():
            before = all_states(student, items)
            after = all_states(student, change_after(items, t))
        for a, b in zip(before, after, strict=True):
            torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=0)
        assert not torch.allclose(before[-1][:, t + 1 :], after[-1][:, t + 1 :])


def test_student_output_structure():
    student = _student()
    out = student(random_items(2, MAX_LEN))
    assert out.embedding.shape == (2, MAX_LEN, WIDTH)
    assert len(out.hidden_states) == 2 and out.output is out.hidden_states[-1]
    assert student.full_sort_predict(random_items(2, 4)).shape == (2, NUM_ITEMS + 1)
    student.eval()  # head dropout off: item_logits is the head without the padding column
    torch.testing.assert_close(student.item_logits(out.output), student.logits(out.output)[..., 1:])


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_student_traces_and_generalises_to_other_inputs():
    predict = ScorePredict(_student()).eval()
    example = left_pad(random_items(2, 6, seed=1), 4)
    other = left_pad(random_items(5, 3, seed=2), 5)  # other batch, length and padding
    with torch.no_grad():
        traced = torch.jit.trace(predict, example)
        torch.testing.assert_close(traced(other), predict(other))


def test_inheritance_refuses_a_mismatched_supernet():
    supernet = tiny_supernet("causal")
    wide = random_genotype("causal", 3, 2, WIDTH * 2, seed=0)
    with pytest.raises(UserError, match="width"):
        inherit_weights(Student(NUM_ITEMS, MAX_LEN, wide), supernet)
    paper = random_genotype("paper", 3, 2, WIDTH, seed=0)
    with pytest.raises(UserError, match="op set"):
        inherit_weights(Student(NUM_ITEMS, MAX_LEN, paper), supernet)
    deeper = random_genotype("causal", 3, 3, WIDTH, seed=0)
    with pytest.raises(UserError, match="more cells"):
        inherit_weights(Student(NUM_ITEMS, MAX_LEN, deeper), supernet)


POOLING_CELL = (
    ((0, "causal_max_pool3"),),
    ((0, "causal_max_pool3"), (1, "causal_max_pool3")),
    ((0, "skip"), (1, "causal_avg_pool3"), (2, "causal_max_pool3")),
)


def test_receptive_field_follows_the_longest_chain_of_reaches():
    # node_2 <- max_pool(node_1) <- max_pool(node_0) <- max_pool(input): 6 per cell.
    assert Genotype("causal", POOLING_CELL, cells=4, width=WIDTH).receptive_field() == 25
    convs = (((0, "causal_dil_conv5"),), ((0, "none"), (1, "causal_conv3")))
    assert Genotype("causal", convs, cells=2, width=WIDTH).receptive_field() == 2 * (8 + 2) + 1
    # "none" edges carry nothing; centred paper ops reach back half their span.
    nothing = (((0, "none"),), ((0, "skip"), (1, "none")))
    assert Genotype("causal", nothing, cells=3, width=WIDTH).receptive_field() == 1
    paper = (((0, "conv5"),), ((0, "max_pool3"), (1, "dil_conv5")))
    assert Genotype("paper", paper, cells=1, width=WIDTH).receptive_field() == 2 + 4 + 1


@pytest.mark.parametrize(
    "genotype",
    [
        Genotype("causal", POOLING_CELL, cells=2, width=WIDTH),
        Genotype("causal", (((0, "causal_dil_conv5"),), ((0, "skip"), (1, "none"))), 4, WIDTH),
    ]
    + [
        random_genotype(op_set, 3, 2, WIDTH, seed)
        for op_set in ("causal", "paper")
        for seed in (0, 1)
    ],
    ids=lambda g: f"{g.op_set}-window{g.receptive_field()}",
)
def test_prediction_from_the_receptive_field_equals_the_whole_history(genotype):
    max_len = 40
    student = add_noise(Student(NUM_ITEMS, max_len, genotype, dropout=0.0)).eval()
    # Histories shorter than, about as long as, and longer than the window; left-padded.
    lengths = (3, genotype.receptive_field(), max_len)
    items = torch.cat(
        [left_pad(random_items(2, n, seed=n), max_len - n) for n in lengths if n <= max_len]
    )
    with torch.no_grad():
        whole = student.logits(student(items).output[:, -1, :])
        windowed = student.full_sort_predict(items)
    torch.testing.assert_close(windowed, whole, atol=1e-5, rtol=0)


def test_each_cell_computes_only_the_positions_later_cells_read():
    genotype = Genotype("causal", POOLING_CELL, cells=4, width=WIDTH)
    assert genotype.cell_reach() == 6
    student = Student(NUM_ITEMS, 40, genotype, dropout=0.0).eval()
    items = random_items(2, 40, seed=5)
    with torch.no_grad():
        window = slice(-genotype.receptive_field(), None)
        trimmed = student.run_cells(
            items[:, window],
            lambda c, x, m: c(x, m),
            item_positions(items)[:, window],
            trim=genotype.cell_reach(),
        )
        whole = student(items)
    # Cell k of 4 keeps (4 - k) * 6 + 1 positions: 25, 19, 13, 7 (not 4 x 40).
    assert [h.shape[1] for h in trimmed.hidden_states] == [25, 19, 13, 7]
    # Only the last cell's last position is exact; it is what inference reads.
    torch.testing.assert_close(trimmed.output[:, -1], whole.output[:, -1], atol=1e-5, rtol=0)


def test_the_pooling_student_reads_only_its_window():
    student = Student(NUM_ITEMS, 40, Genotype("causal", POOLING_CELL, cells=2, width=WIDTH))
    student = add_noise(student).eval()
    items = random_items(2, 40, seed=3)
    changed = items.clone()
    changed[:, : 40 - student.window] = 1  # every item before the window
    with torch.no_grad():
        torch.testing.assert_close(
            student.full_sort_predict(changed), student.full_sort_predict(items)
        )
        # ... while earlier positions of the whole-history forward do see them.
        assert not torch.equal(student(changed).output, student(items).output)


def _shared_input_student(op_set: str) -> Student:
    """Three convolutions on the cell input (one dilated), a convolution and a pool on
    node 0, a skip; the paper set's causal dilated convs (BatchNorm) beside its centred
    ops, which serve as they train."""
    if op_set == "causal":
        nodes = (
            ((0, "causal_conv3"),),
            ((0, "causal_conv5"), (1, "causal_conv3")),
            ((0, "causal_dil_conv3"), (1, "causal_max_pool3"), (2, "skip")),
        )
    else:
        nodes = (
            ((0, "causal_dil_conv3"),),
            ((0, "causal_dil_conv5"), (1, "conv3")),
            ((0, "conv5"), (1, "causal_dil_conv3"), (2, "max_pool3")),
        )
    torch.manual_seed(3)
    student = Student(NUM_ITEMS, MAX_LEN, Genotype(op_set, nodes, 2, WIDTH), dropout=0.0)
    student = add_noise(student, 3)
    with torch.no_grad():  # move BatchNorm statistics off their initial values
        student.train()(random_items(4, MAX_LEN, seed=4))
    return student.eval()


@pytest.mark.parametrize("op_set", ("causal", "paper"))
def test_serving_computes_what_training_computes(op_set):
    student = _shared_input_student(op_set)
    cell = student.cells[0]
    # The cell input is padded once for its three convolutions, as far as the longest.
    assert cell.window_reach == ({0: 4, 1: 2} if op_set == "causal" else {0: 8, 1: 4})
    items = left_pad(random_items(3, MAX_LEN - 4, seed=6), 4)
    per_edge = all_states(student, items)  # gradients on: each edge's own forward
    with torch.no_grad():
        served = all_states(student, items)
    for a, b in zip(per_edge, served, strict=True):
        torch.testing.assert_close(b, a.detach(), atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_a_frozen_trace_serves_convolutions_as_products_over_shared_windows():
    student = _shared_input_student("causal")
    predict = ScorePredict(student).eval()
    example = left_pad(random_items(2, MAX_LEN - 2, seed=1), 2)
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(predict, example))
        expected = predict(example)
    kinds = [node.kind() for node in frozen.graph.nodes()]
    # Per cell: one pad and one windows view for each of the two states that convolutions
    # or pools read; one product per convolution (4), with its weight a folded constant.
    assert "aten::_convolution" not in kinds and "aten::transpose" not in kinds
    assert kinds.count("aten::pad") == kinds.count("aten::unfold") == 2 * 2
    assert kinds.count("aten::matmul") == 2 * 4
    assert "aten::t" not in kinds and "aten::contiguous" not in kinds
    torch.testing.assert_close(frozen(example), expected, atol=1e-5, rtol=0)


def test_serving_reads_the_current_weights():
    student = _shared_input_student("causal")
    items = random_items(2, MAX_LEN, seed=8)
    with torch.no_grad():
        before = student.full_sort_predict(items)
        # In place, as an optimizer step or load_state_dict changes them.
        student.cells[1].nodes[1]["0"]["causal_conv5"].conv.weight.mul_(-1.5)
        after = student.full_sort_predict(items)
    per_edge = student.full_sort_predict(items).detach()
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, per_edge, atol=1e-5, rtol=0)


# Node 0 (pools) and node 1 (a convolution and a pool) are read by node 2; node 2 by none.
ZEROED_CELL = (
    ((0, "causal_max_pool3"),),
    ((0, "causal_conv3"), (1, "causal_avg_pool3")),
    ((1, "skip"), (2, "causal_max_pool3")),
)


def test_only_nodes_that_are_read_and_can_hold_padding_are_zeroed():
    causal = Student(NUM_ITEMS, MAX_LEN, Genotype("causal", ZEROED_CELL, 2, WIDTH))
    assert causal.cells[0].masked_nodes == {1}
    # A centred pool reads the next (real) position at the last padding position.
    centred = tuple(tuple((i, op.removeprefix("causal_")) for i, op in n) for n in ZEROED_CELL)
    paper = Student(NUM_ITEMS, MAX_LEN, Genotype("paper", centred, 2, WIDTH))
    assert paper.cells[0].masked_nodes == {0, 1}


@pytest.mark.parametrize("grad", (True, False), ids=("training", "serving"))
def test_padding_before_a_history_changes_nothing(grad):
    student = Student(NUM_ITEMS, 16, Genotype("causal", ZEROED_CELL, 2, WIDTH), dropout=0.0)
    student = add_noise(student).eval()
    items = random_items(3, 7, seed=9)
    with torch.set_grad_enabled(grad):
        bare = all_states(student, items)  # the ops' own zero padding only
        padded = all_states(student, left_pad(items, 9))
    for a, b in zip(bare, padded, strict=True):
        torch.testing.assert_close(b[:, -7:], a, atol=1e-5, rtol=0)


def _student_without_positions(max_len: int = 40, seed: int = 0) -> Student:
    torch.manual_seed(seed)
    genotype = Genotype("causal", ZEROED_CELL, 2, WIDTH)
    student = Student(NUM_ITEMS, max_len, genotype, dropout=0.0, positions="none")
    return add_noise(student, seed).eval()


def test_a_student_without_positions_has_no_position_embedding():
    genotype = Genotype("causal", ZEROED_CELL, 2, WIDTH)
    absolute = Student(NUM_ITEMS, MAX_LEN, genotype)
    none = Student(NUM_ITEMS, MAX_LEN, genotype, positions="none")
    assert absolute.uses_positions and absolute.positions == "absolute"
    assert not none.uses_positions and none.position_embedding is None
    assert not any("position" in name for name in none.state_dict())
    # Its parameter count is honest: the absolute student's less the max_len x width table.
    count = sum(p.numel() for p in absolute.parameters())
    assert sum(p.numel() for p in none.parameters()) == count - MAX_LEN * WIDTH
    with pytest.raises(ValueError, match="positions must be one of absolute, none"):
        Student(NUM_ITEMS, MAX_LEN, genotype, positions="relative")


@pytest.mark.parametrize("grad", (True, False), ids=("training", "serving"))
def test_without_positions_scores_do_not_depend_on_what_precedes_the_window(grad):
    student = _student_without_positions()
    assert student.window == 13
    items = random_items(3, 15, seed=2)
    earlier = random_items(3, 20, seed=3)
    with torch.set_grad_enabled(grad):
        bare = student.full_sort_predict(items)
        # Left padding, or older items the receptive field does not reach: the latest
        # items sit at other absolute positions, which must not matter.
        padded = student.full_sort_predict(left_pad(items, 9))
        longer = student.full_sort_predict(torch.cat([earlier, items], dim=1))
        whole = student.logits(student(torch.cat([earlier, items], dim=1)).output[:, -1])
    for scores in (padded, longer, whole):
        torch.testing.assert_close(scores, bare, atol=1e-5, rtol=0)
    # The same weights with absolute positions do depend on it: the check has teeth.
    absolute = Student(NUM_ITEMS, 40, student.genotype, dropout=0.0).eval()
    absolute.load_state_dict(student.state_dict(), strict=False)
    with torch.no_grad():
        absolute.position_embedding.embedding.weight.normal_()
        assert not torch.allclose(
            absolute.full_sort_predict(torch.cat([earlier, items], dim=1)),
            absolute.full_sort_predict(items),
            atol=1e-3,
        )


def test_a_student_without_positions_inherits_all_but_the_supernets_positions():
    supernet, genotype = _searched("causal")
    student = Student(NUM_ITEMS, MAX_LEN, genotype, dropout=0.0, positions="none")
    copied = inherit_weights(student, supernet)
    assert copied == len(student.state_dict()) > 0
    assert "position_embedding.embedding.weight" in supernet.state_dict()
    # Equal to the derived supernet once its position embedding adds nothing.
    with torch.no_grad():
        supernet.position_embedding.embedding.weight.zero_()
    _assert_matches_derived_supernet(student, supernet)


def test_positions_round_trip_through_the_spec():
    student = _student_without_positions(max_len=MAX_LEN)
    spec = student.to_spec()
    assert spec["positions"] == "none"
    loaded = Student.from_spec(spec)
    assert not loaded.uses_positions
    loaded.load_state_dict(student.state_dict())  # strict: the same tensors
    items = random_items(2, MAX_LEN, seed=4)
    with torch.no_grad():
        expected = student.full_sort_predict(items)
        torch.testing.assert_close(loaded.eval().full_sort_predict(items), expected)


def test_a_spec_saved_before_positions_were_an_option_loads_as_absolute():
    absolute = _student()
    spec = absolute.to_spec()
    assert spec["positions"] == "absolute"
    del spec["positions"]
    loaded = Student.from_spec(spec)
    assert loaded.uses_positions and loaded.positions == "absolute"
    loaded.load_state_dict(absolute.state_dict())  # strict: the position embedding too


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_a_student_without_positions_traces():
    predict = ScorePredict(_student_without_positions(max_len=MAX_LEN)).eval()
    example = left_pad(random_items(2, 6, seed=1), 4)
    other = left_pad(random_items(5, 3, seed=2), 7)
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(predict, example))
        torch.testing.assert_close(frozen(other), predict(other))
    # No position indices are computed for nothing.
    assert "aten::cumsum" not in [node.kind() for node in frozen.graph.nodes()]


@pytest.mark.parametrize("positions", ["absolute", "none"])
@pytest.mark.parametrize("seed", range(4))
def test_step_equals_the_forward_at_each_new_position(seed, positions):
    """The student's own per-position ``step`` (each cell's ``step`` from its ops' ``step``;
    serve.streaming uses it) is its forward's last output, position after position, and
    ``last_output`` of a history's tail at its positions is the forward's too."""
    genotype = random_genotype("causal", nodes=3, cells=2, width=WIDTH, seed=seed)
    torch.manual_seed(seed)
    student = add_noise(Student(NUM_ITEMS, MAX_LEN, genotype, positions=positions), seed).eval()
    items = random_items(1, MAX_LEN, seed)
    queues, weights = student.step_state(), student.step_weights()
    with torch.no_grad():
        full = student(items).output[0]
        for t, item in enumerate(items[0].tolist()):
            output, queues = student.step(item, t, queues, weights)
            assert torch.allclose(output, full[t], atol=1e-5)
        tail = min(student.window, MAX_LEN)
        positions_tail = torch.arange(MAX_LEN - tail, MAX_LEN).unsqueeze(0)
        last = student.last_output(items[:, -tail:], positions_tail)[0]
        assert torch.allclose(last, full[-1], atol=1e-5)
