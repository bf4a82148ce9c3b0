"""Behaviour every neural teacher shares: shapes, causality, padding, prediction, learning."""

import pytest
import torch
import torch.nn.functional as F

from adarec.models.base import count_parameters
from adarec.models.nextitnet import NextItNet
from tests.models.helpers import (
    CAUSAL,
    MAX_LEN,
    NEURAL,
    NUM_ITEMS,
    all_states,
    left_pad,
    random_items,
    tiny_model,
)

EXPECTED_HIDDEN = {
    "nextitnet": 2,  # 4 blocks, every second one
    "sasrec": 2,
    "bert4rec_causal": 2,
    "bert4rec_bidirectional": 2,
}


@pytest.mark.parametrize("name", NEURAL)
def test_output_shapes(name):
    model = tiny_model(name)
    items = left_pad(random_items(3, MAX_LEN - 4, torch.Generator().manual_seed(0)), 4)
    out = model(items)
    assert out.embedding.shape == (3, MAX_LEN, 16)
    assert out.output.shape == (3, MAX_LEN, 16)
    assert len(out.hidden_states) == EXPECTED_HIDDEN[name]
    assert all(h.shape == (3, MAX_LEN, 16) for h in out.hidden_states)
    assert model.logits(out.output).shape == (3, MAX_LEN, NUM_ITEMS + 1)
    assert model.full_sort_predict(items).shape == (3, NUM_ITEMS + 1)
    assert (model.num_items, model.max_len, model.hidden_size) == (NUM_ITEMS, MAX_LEN, 16)


@pytest.mark.parametrize("name", NEURAL)
def test_hidden_states_are_every_kth_block_output(name):
    model = tiny_model(name, num_blocks=6, distill_every=3)
    block_outputs = []
    for block in model.blocks:
        block.register_forward_hook(lambda module, args, out: block_outputs.append(out))
    out = model(random_items(2, MAX_LEN, torch.Generator().manual_seed(1)))
    assert len(out.hidden_states) == 2
    torch.testing.assert_close(out.hidden_states[0], block_outputs[2])
    torch.testing.assert_close(out.hidden_states[1], block_outputs[5])
    torch.testing.assert_close(out.output, block_outputs[5])


@pytest.mark.parametrize("name", CAUSAL)
def test_later_items_do_not_change_earlier_positions(name):
    model = tiny_model(name)
    generator = torch.Generator().manual_seed(2)
    items = left_pad(random_items(4, MAX_LEN - 3, generator), 3)
    before = all_states(model, items)
    for t in (0, 2, 3, 7, MAX_LEN - 2):
        changed = items.clone()
        changed[:, t + 1 :] = random_items(4, MAX_LEN - t - 1, generator)
        after = all_states(model, changed)
        for old, new in zip(before, after, strict=True):
            torch.testing.assert_close(old[:, : t + 1], new[:, : t + 1])
        # The change is visible later on, so the comparison above is not vacuous.
        assert not torch.allclose(before[-1][:, -1], after[-1][:, -1])


def test_bidirectional_bert4rec_sees_later_items():
    model = tiny_model("bert4rec_bidirectional")
    items = random_items(2, MAX_LEN, torch.Generator().manual_seed(3))
    changed = items.clone()
    changed[:, -1] = items[:, -1] % NUM_ITEMS + 1
    before, after = all_states(model, items), all_states(model, changed)
    assert not torch.allclose(before[-1][:, 0], after[-1][:, 0])


@pytest.mark.parametrize("name", NEURAL)
def test_padding_length_does_not_matter(name):
    """3 or 10 left pads: the real positions get the same states."""
    model = tiny_model(name)
    real = random_items(2, 6, torch.Generator().manual_seed(4))
    short, long = all_states(model, left_pad(real, 3)), all_states(model, left_pad(real, 10))
    for a, b in zip(short, long, strict=True):
        torch.testing.assert_close(a[:, -6:], b[:, -6:], atol=1e-5, rtol=1e-5)
    assert torch.all(short[0][:, :3] == 0) and torch.all(long[-2][:, :10] == 0)


@pytest.mark.parametrize("name", NEURAL)
def test_padding_embedding_has_no_effect(name):
    model = tiny_model(name)
    items = left_pad(random_items(2, 9, torch.Generator().manual_seed(5)), MAX_LEN - 9)
    before = all_states(model, items)
    with torch.no_grad():
        model.item_embedding.weight[0].normal_(0.0, 5.0)
    after = all_states(model, items)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a[:, -9:], b[:, -9:])


@pytest.mark.parametrize("name", ("nextitnet", "sasrec", "bert4rec_causal"))
def test_full_sort_predict_is_the_last_position(name):
    model = tiny_model(name)
    items = left_pad(random_items(3, 11, torch.Generator().manual_seed(6)), MAX_LEN - 11)
    expected = model.logits(model(items).output)[:, -1]
    torch.testing.assert_close(model.full_sort_predict(items), expected)


@pytest.mark.parametrize("name", NEURAL)
def test_body_excludes_embedding_and_output(name):
    model = tiny_model(name)
    counts = count_parameters(model)
    catalogue = sum(
        p.numel() for m in (model.item_embedding, model.output_layer) for p in m.parameters()
    )
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["body"] == counts["total"] - catalogue > 0
    # A larger catalogue grows the total, never the body.
    bigger = count_parameters(tiny_model(name, num_items=3 * NUM_ITEMS))
    assert bigger["total"] > counts["total"] and bigger["body"] == counts["body"]


def test_paper_preset_nextitnet_size():
    model = NextItNet(
        1000, 50, hidden_size=256, num_blocks=16, dilations=[1, 4], kernel_size=3, distill_every=2
    )
    # Per block: two 256x256 k3 convs with bias, two LayerNorms, one residual scale.
    per_block = 2 * (256 * 256 * 3 + 256) + 2 * 2 * 256 + 1
    assert count_parameters(model)["body"] == 16 * per_block == 6_316_048
    out = model(torch.randint(1, 1001, (1, 50)))
    assert len(out.hidden_states) == 8
    dilations = [(b.conv1.conv.dilation[0], b.conv2.conv.dilation[0]) for b in model.blocks]
    assert dilations == [(1, 2), (4, 8)] * 8


def test_residual_scale_starts_at_zero():
    model = NextItNet(NUM_ITEMS, MAX_LEN, hidden_size=8, num_blocks=2).eval()
    assert all(b.scale.item() == 0.0 for b in model.blocks)
    out = model(torch.randint(1, NUM_ITEMS + 1, (2, MAX_LEN)))
    torch.testing.assert_close(out.output, out.embedding)  # every block is the identity
    plain = NextItNet(NUM_ITEMS, MAX_LEN, hidden_size=8, num_blocks=2, residual_scale=False)
    assert all(b.scale is None for b in plain.blocks)


def _planted_batch(generator: torch.Generator, batch: int = 32) -> torch.Tensor:
    """Windows where each item is determined by the two before it (needs context)."""
    length = MAX_LEN + 1
    seqs = torch.zeros(batch, length, dtype=torch.long)
    seqs[:, :2] = torch.randint(1, NUM_ITEMS + 1, (batch, 2), generator=generator)
    for t in range(2, length):
        seqs[:, t] = (seqs[:, t - 1] + 2 * seqs[:, t - 2]) % NUM_ITEMS + 1
    pads = torch.randint(0, 6, (batch,), generator=generator)
    keep = torch.arange(length).unsqueeze(0) >= pads.unsqueeze(1)
    return seqs * keep


@pytest.mark.parametrize("name", CAUSAL)
def test_learns_a_planted_pattern(name):
    model = tiny_model(name, noise=0.0, hidden_size=32, dropout=0.0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    window = _planted_batch(torch.Generator().manual_seed(7))
    inputs, targets = window[:, :-1], window[:, 1:] * (window[:, :-1] > 0)
    losses = []
    for _ in range(40):
        logits = model.logits(model(inputs).output)
        loss = F.cross_entropy(
            logits[..., 1:].flatten(0, 1), targets.flatten() - 1, ignore_index=-1
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


@pytest.mark.parametrize("name", NEURAL)
def test_item_logits_are_the_logits_without_the_padding_column(name):
    """The training losses read ``item_logits``: same values and gradients as slicing."""
    model = tiny_model(name)
    model.eval()
    items = left_pad(random_items(3, MAX_LEN - 4, torch.Generator().manual_seed(1)), 4)
    output = model(items).output
    sliced = model.logits(output)[..., 1:]
    direct = model.item_logits(output)
    assert direct.shape == (3, MAX_LEN, NUM_ITEMS)
    torch.testing.assert_close(direct, sliced)
    weights = torch.randn_like(direct)
    (sliced_grad,) = torch.autograd.grad((sliced * weights).sum(), model.output_layer.weight)
    (direct_grad,) = torch.autograd.grad((direct * weights).sum(), model.output_layer.weight)
    torch.testing.assert_close(direct_grad, sliced_grad)
    assert torch.all(direct_grad[0] == 0)  # the padding row gets no gradient


@pytest.mark.parametrize("name", ["nextitnet", "sasrec", "bert4rec_causal"])
def test_step_equals_the_forward_at_each_new_position(name):
    """A causal teacher's own per-position ``step`` (serve.streaming uses it) is its
    forward's last output, position after position."""
    model = tiny_model(name)
    items = random_items(1, MAX_LEN, torch.Generator().manual_seed(3))[0].tolist()
    state = model.step_state()
    with torch.no_grad():
        full = model(torch.tensor([items])).output[0]
        for t, item in enumerate(items):
            output, state = model.step(item, t, state)
            assert torch.allclose(output, full[t], atol=1e-5)
