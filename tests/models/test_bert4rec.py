"""BERT4Rec specifics: the [MASK] item, the causal switch and masked-item batches."""

import torch
import torch.nn.functional as F

from adarec.models.bert4rec import BERT4Rec, mask_items
from tests.models.helpers import MAX_LEN, NUM_ITEMS, left_pad, random_items, tiny_model


def test_vocabulary_has_a_mask_item_but_logits_do_not():
    model = tiny_model("bert4rec_bidirectional")
    assert model.mask_token == NUM_ITEMS + 1
    assert model.item_embedding.num_embeddings == NUM_ITEMS + 2
    assert model.output_layer.out_features == NUM_ITEMS + 1
    items = torch.full((1, MAX_LEN), model.mask_token)
    assert model.logits(model(items).output).shape == (1, MAX_LEN, NUM_ITEMS + 1)


def test_bidirectional_prediction_scores_an_appended_mask():
    model = tiny_model("bert4rec_bidirectional")
    items = left_pad(random_items(3, 8, torch.Generator().manual_seed(0)), MAX_LEN - 8)
    shifted = torch.cat([items[:, 1:], torch.full((3, 1), model.mask_token)], dim=1)
    expected = model.logits(model(shifted).output)[:, -1]
    torch.testing.assert_close(model.full_sort_predict(items), expected)
    # Not the causal last-position rule.
    assert not torch.allclose(expected, model.logits(model(items).output)[:, -1])


def test_causal_switch_changes_attention_not_weights():
    model = tiny_model("bert4rec_bidirectional", num_blocks=1)
    items = random_items(2, MAX_LEN, torch.Generator().manual_seed(1))
    bidirectional = model(items).output
    model.causal = True
    causal = model(items).output
    # In one block the last position sees everything either way; earlier ones see less
    # when causal.
    torch.testing.assert_close(bidirectional[:, -1], causal[:, -1])
    assert not torch.allclose(bidirectional[:, 0], causal[:, 0])


def _masked(seed: int, mask_prob: float = 0.4):
    num_items = 1000  # large, so a "random item" rarely equals the original
    generator = torch.Generator().manual_seed(123)
    items = torch.randint(1, num_items + 1, (400, 30), generator=generator)
    pads = torch.randint(0, 31, (400,), generator=generator)  # some rows are all padding
    items = items * (torch.arange(30).unsqueeze(0) >= pads.unsqueeze(1))
    inputs, labels = mask_items(
        items, mask_prob, num_items + 1, num_items, torch.Generator().manual_seed(seed)
    )
    return items, inputs, labels


def test_mask_items_follows_the_80_10_10_rule():
    items, inputs, labels = _masked(seed=0)
    real = items > 0
    chosen = labels > 0
    assert torch.equal(labels[chosen], items[chosen])
    assert not torch.any(chosen & ~real)  # padding is never chosen
    assert torch.equal(inputs[~chosen], items[~chosen])  # the rest is untouched
    assert 0.37 < chosen.sum() / real.sum() < 0.45  # mask_prob plus the forced ones
    n = chosen.sum().item()
    masked = (inputs[chosen] == 1001).sum().item() / n
    kept = (inputs[chosen] == items[chosen]).sum().item() / n
    replaced = 1.0 - masked - kept
    assert abs(masked - 0.8) < 0.03 and abs(kept - 0.1) < 0.02 and abs(replaced - 0.1) < 0.02
    assert inputs[chosen].min() >= 1 and inputs[chosen].max() <= 1001


def test_every_non_empty_row_has_a_target():
    items, _, labels = _masked(seed=1, mask_prob=0.02)
    non_empty = (items > 0).any(dim=1)
    assert torch.equal((labels > 0).any(dim=1), non_empty)
    assert not non_empty.all()  # the batch does hold empty rows


def test_mask_items_is_deterministic_per_generator():
    _, inputs_a, labels_a = _masked(seed=5)
    _, inputs_b, labels_b = _masked(seed=5)
    _, inputs_c, labels_c = _masked(seed=6)
    assert torch.equal(inputs_a, inputs_b) and torch.equal(labels_a, labels_b)
    assert not torch.equal(labels_a, labels_c)


def test_bidirectional_model_overfits_masked_items():
    """The masked items of a fixed batch are learnt within a few dozen steps."""
    torch.manual_seed(0)
    model = BERT4Rec(
        NUM_ITEMS, MAX_LEN, hidden_size=32, num_blocks=2, num_heads=2, inner_size=64, dropout=0.0
    )
    cycle = torch.arange(NUM_ITEMS) + 1
    items = torch.stack([torch.roll(cycle, k)[:MAX_LEN] for k in range(NUM_ITEMS)])
    inputs, labels = mask_items(
        items, 0.4, model.mask_token, NUM_ITEMS, torch.Generator().manual_seed(0)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        logits = model.logits(model(inputs).output)[..., 1:]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten() - 1, ignore_index=-1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
