"""The op zoo: shapes, and causality of every op of the default set (the paper's leak)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adarec.errors import UserError
from adarec.nas.operations import CAUSAL_OPS, OP_SETS, PAPER_OPS, make_op
from tests.nas.helpers import add_noise

CENTRED = ("conv3", "dil_conv3", "conv5", "dil_conv5", "max_pool3", "avg_pool3")
LENGTH, CHANNELS, T = 9, 6, 4


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch and the same batch with every position after T changed (raised, so maxima move)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, LENGTH, CHANNELS, generator=generator)
    future = x.clone()
    future[:, T + 1 :] += 5.0 + torch.randn(3, LENGTH - T - 1, CHANNELS, generator=generator)
    return x, future


def _op(name: str, op_set: str, train: bool) -> nn.Module:
    torch.manual_seed(0)
    return add_noise(make_op(name, CHANNELS, op_set)).train(train)


def _past_changes(op: nn.Module) -> bool:
    x, future = _inputs()
    with torch.no_grad():
        return not torch.allclose(op(x)[:, : T + 1], op(future)[:, : T + 1], atol=1e-6)


@pytest.mark.parametrize("op_set", list(OP_SETS))
def test_every_op_keeps_the_shape(op_set):
    x = torch.randn(2, LENGTH, CHANNELS)
    for name in OP_SETS[op_set]:
        for train in (True, False):
            assert _op(name, op_set, train)(x).shape == x.shape, name


def test_sets_hold_the_specified_ops():
    assert len(CAUSAL_OPS) == 8 and len(PAPER_OPS) == 10
    assert set(CENTRED) <= set(PAPER_OPS)
    assert not set(CENTRED) & set(CAUSAL_OPS)


@pytest.mark.parametrize("train", (True, False))
@pytest.mark.parametrize("name", CAUSAL_OPS)
def test_causal_ops_never_see_later_positions(name, train):
    op = _op(name, "causal", train)
    assert not _past_changes(op)
    # The op does depend on its input (except "none"): the check could fail.
    x, _ = _inputs()
    if name != "none":
        assert not torch.allclose(op(x), op(x + torch.randn_like(x)))


@pytest.mark.parametrize("name", CENTRED)
def test_centred_paper_ops_leak_the_next_position(name):
    assert _past_changes(_op(name, "paper", train=False))


@pytest.mark.parametrize("name", ("causal_dil_conv3", "causal_dil_conv5"))
def test_paper_causal_convs_leak_only_through_batchnorm_in_training(name):
    assert not _past_changes(_op(name, "paper", train=False))
    assert _past_changes(_op(name, "paper", train=True))  # batch statistics mix positions
    assert not _past_changes(_op(name, "causal", train=True))  # LayerNorm does not


def test_causal_average_pool_divides_by_three_with_zero_padding():
    x = torch.arange(1.0, 5.0).view(1, 4, 1)
    out = make_op("causal_avg_pool3", 1)(x).flatten()
    torch.testing.assert_close(out, torch.tensor([1 / 3, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(
        make_op("causal_max_pool3", 1)(-x).flatten(), torch.tensor([0.0, 0.0, -1.0, -2.0])
    )


def test_shared_names_take_the_norm_of_their_set():
    causal = make_op("causal_dil_conv3", 4, "causal")
    paper = make_op("causal_dil_conv3", 4, "paper")
    assert isinstance(causal.norm, nn.LayerNorm) and isinstance(paper.norm, nn.BatchNorm1d)
    assert isinstance(make_op("conv3", 4).norm, nn.BatchNorm1d)


@pytest.mark.parametrize(
    ("name", "op_set"), [("conv7", None), ("conv3", "causal"), ("skip", "other")]
)
def test_unknown_op_or_set_is_a_user_error(name, op_set):
    with pytest.raises(UserError, match="unknown"):
        make_op(name, 4, op_set)


@pytest.mark.parametrize(
    ("name", "op_set"),
    [(name, "causal") for name in CAUSAL_OPS if name.startswith("causal_")]
    + [("causal_dil_conv5", "paper")],  # BatchNorm after the convolution
)
def test_serving_from_wider_windows_computes_the_forward(name, op_set):
    op = _op(name, op_set, train=False)
    x = torch.relu(torch.randn(2, LENGTH, CHANNELS))  # edge inputs pass through ReLU
    # The per-position forward: a pool takes it when its input requires gradients.
    expected = op(x.clone().requires_grad_()).detach()
    for reach in (op.reach, op.reach + 3):
        windows = F.pad(x, (0, 0, reach, 0)).unfold(1, reach + 1, 1)
        assert windows.shape == (2, LENGTH, CHANNELS, reach + 1)
        with torch.no_grad():
            torch.testing.assert_close(op.of_windows(windows, reach), expected, atol=1e-5, rtol=0)
    if "conv" in name:
        with pytest.raises(ValueError, match="reach"):
            op.of_windows(windows[..., 1:], op.reach - 1)
