"""Shared blocks: masks, positions, causal convolution and masked attention."""

import torch
from torch import nn

from adarec.models.layers import (
    CausalConv1d,
    MultiHeadSelfAttention,
    TransformerBlock,
    attention_mask,
    init_weights,
    item_positions,
    padding_mask,
    push_window,
)


def test_positions_count_from_the_oldest_real_item():
    items = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5], [0, 0, 0, 0, 0]])
    assert padding_mask(items)[0].tolist() == [False, False, True, True, True]
    assert item_positions(items).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0] * 5]


def test_causal_conv_sees_exactly_its_receptive_field():
    torch.manual_seed(0)
    conv = CausalConv1d(4, 6, kernel_size=3, dilation=2)
    x = torch.randn(1, 12, 4)
    out = conv(x)
    assert out.shape == (1, 12, 6)
    t = 7
    for source in range(12):
        changed = x.clone()
        changed[0, source] += 1.0
        moved = not torch.allclose(conv(changed)[0, t], out[0, t])
        assert moved == (source in (t - 4, t - 2, t)), source


def test_attention_mask_hides_padding_and_the_future():
    items = torch.tensor([[0, 3, 4]])
    causal = attention_mask(items, causal=True)[0].int().tolist()
    assert causal == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    both_ways = attention_mask(items, causal=False)[0].int().tolist()
    assert both_ways == [[1, 1, 1], [0, 1, 1], [0, 1, 1]]


def test_attention_is_finite_on_all_padding_rows():
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 16, 0.0, "gelu").eval()
    items = torch.tensor([[0, 0, 0, 0], [0, 0, 2, 3]])
    x = torch.randn(2, 4, 8)
    real = padding_mask(items).unsqueeze(-1).float()
    out = block(x, attention_mask(items, causal=False), real)
    assert torch.isfinite(out).all()
    assert torch.all(out[0] == 0) and torch.all(out[1, :2] == 0)


def test_masked_keys_get_no_weight():
    torch.manual_seed(0)
    attention = MultiHeadSelfAttention(8, 2, 0.0)
    items = torch.tensor([[0, 1, 2, 3]])
    allowed = attention_mask(items, causal=False)
    x = torch.randn(1, 4, 8)
    changed = x.clone()
    changed[0, 0] = 100.0  # the padding position's value
    torch.testing.assert_close(attention(x, allowed)[0, 1:], attention(changed, allowed)[0, 1:])


def test_init_weights():
    embedding = nn.Embedding(5, 8, padding_idx=0)
    linear = nn.Linear(8, 8)
    for module in (embedding, linear):
        init_weights(module)
    assert torch.all(embedding.weight[0] == 0)
    assert torch.all(linear.bias == 0)
    assert 0.01 < linear.weight.std().item() < 0.03


def test_attention_and_block_steps_equal_the_causal_forward_at_each_position():
    """``step`` (one position, key/value caches) is the causal forward's last position."""
    torch.manual_seed(0)
    block = TransformerBlock(8, num_heads=2, inner_size=16, dropout=0.0, activation="gelu")
    block.eval()
    x = torch.randn(1, 6, 8)
    items = torch.ones(1, 6, dtype=torch.long)
    with torch.no_grad():
        full = block(x, attention_mask(items, causal=True), torch.ones(1, 6, 1))[0]
        keys = values = torch.zeros(0, 8)
        for t in range(6):
            out, keys, values = block.step(x[0, t], keys, values)
            assert keys.shape == values.shape == (t + 1, 8)
            assert torch.allclose(out, full[t], atol=1e-5)


def test_push_window_appends_and_drops_the_oldest():
    queue = torch.tensor([[1.0], [2.0]])
    window, later = push_window(queue, torch.tensor([3.0]))
    assert window.flatten().tolist() == [1.0, 2.0, 3.0] and later.flatten().tolist() == [2.0, 3.0]
