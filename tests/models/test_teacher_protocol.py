"""The teacher protocol: adarec's teachers follow it, and a module that does not is named."""

import pytest
import torch
from torch import nn

from adarec.errors import UserError
from adarec.models.base import SeqOutput
from adarec.models.teacher_protocol import check_teacher
from tests.models.helpers import CAUSAL, MAX_LEN, NUM_ITEMS, tiny_model


@pytest.mark.parametrize("name", CAUSAL)
def test_adarec_teachers_follow_the_protocol(name):
    model = tiny_model(name).train()
    check_teacher(model, NUM_ITEMS, MAX_LEN)
    assert model.training  # the check restores the mode it found


def test_a_bidirectional_teacher_is_refused():
    with pytest.raises(UserError, match="not causal"):
        check_teacher(tiny_model("bert4rec_bidirectional"), NUM_ITEMS, MAX_LEN)


class Plain(nn.Module):
    """A per-position teacher (causal by construction) with configurable faults."""

    def __init__(self, width=8, hidden_width=8, items=NUM_ITEMS, hidden=2, peek=False):
        super().__init__()
        self.hidden_size = width
        self.peek = peek
        self.embed = nn.Embedding(NUM_ITEMS + 1, width)
        self.layers = nn.ModuleList(nn.Linear(width, hidden_width) for _ in range(hidden))
        self.head = nn.Linear(width, items + 1)

    def forward(self, items):
        x = self.embed(items)
        if self.peek:  # position t also sees item t + 1
            x = x + torch.roll(x, -1, dims=1)
        return SeqOutput(x, [layer(x) for layer in self.layers], x)

    def logits(self, output):
        return self.head(output)

    def full_sort_predict(self, items):
        return self.logits(self.forward(items).output[:, -1])


def test_a_plain_module_that_follows_the_protocol_passes():
    check_teacher(Plain(), NUM_ITEMS, MAX_LEN)


class NoLogits(nn.Module):
    hidden_size = 8


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        (lambda items: None, "must be a torch.nn.Module"),
        (NoLogits(), "lacks logits, full_sort_predict"),
        (Plain(hidden=0), "non-empty list"),
        (Plain(hidden_width=4), r"hidden_states\[0\] has shape \(2, 16, 4\)"),
        (Plain(items=NUM_ITEMS - 1), r"logits has shape .* over padding \+ 30 items"),
        (Plain(peek=True), "not causal"),
    ],
)
def test_a_module_that_breaks_the_protocol_is_named(teacher, message):
    with pytest.raises(UserError, match=message):
        check_teacher(teacher, NUM_ITEMS, MAX_LEN)


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_teacher_with_non_finite_logits_is_refused(value):
    """Issue 29 (4): a teacher with inf logits was distilled into a NaN student."""
    teacher = Plain()
    with torch.no_grad():
        teacher.head.bias[3] = value
    with pytest.raises(UserError, match="teacher is not finite: its logits"):
        check_teacher(teacher, NUM_ITEMS, MAX_LEN)


def test_padding_column_may_be_minus_inf():
    """Column 0 (padding) is ignored: a teacher may mask it with -inf."""
    teacher = Plain()
    with torch.no_grad():
        teacher.head.bias[0] = float("-inf")
    check_teacher(teacher, NUM_ITEMS, MAX_LEN)


class PeeksButNotAtTheEnd(Plain):
    """Position t also sees item t + 1, except at the last two positions: changing the
    last item alone never shows it."""

    def forward(self, items):
        x = self.embed(items)
        ahead = torch.roll(x, -1, dims=1)
        ahead[:, -2:] = 0
        x = x + ahead
        return SeqOutput(x, [layer(x) for layer in self.layers], x)


def test_a_teacher_that_peeks_ahead_except_at_the_end_is_refused():
    with pytest.raises(UserError, match=r"not causal: its embedding at position 0 changes"):
        check_teacher(PeeksButNotAtTheEnd(), NUM_ITEMS, MAX_LEN)


def test_nan_outputs_on_another_probe_are_reported_as_nan_not_as_a_leak():
    from adarec.models.teacher_protocol import _probe

    probe = _probe(NUM_ITEMS, MAX_LEN, torch.device("cpu"))
    seen = set(probe.flatten().tolist())
    # An item the first probe does not hold but a changed copy does: NaN only there.
    item = next(i % NUM_ITEMS + 1 for i in sorted(seen) if i % NUM_ITEMS + 1 not in seen)
    teacher = Plain()
    with torch.no_grad():
        teacher.embed.weight[item] = float("nan")
    with pytest.raises(UserError, match="teacher is not finite: its embedding holds NaN"):
        check_teacher(teacher, NUM_ITEMS, MAX_LEN)
