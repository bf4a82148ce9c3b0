"""The supernet: causality end to end, padding, Gumbel sampling, modes, schedule, summary."""

import math

import pytest
import torch
import torch.nn.functional as F

from adarec.errors import UserError
from adarec.nas.genotype import derive_genotype
from adarec.nas.supernet import Supernet, alpha_summary, temperature
from tests.nas.helpers import (
    MAX_LEN,
    NUM_ITEMS,
    WIDTH,
    all_states,
    change_after,
    left_pad,
    random_items,
    tiny_supernet,
)


def _sample(net: Supernet, seed: int, tau: float = 1.0) -> list[torch.Tensor]:
    return net.sample_architecture(tau, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ("single_path", "full"))
def test_causal_supernet_never_sees_later_items(mode):
    net = tiny_supernet(mode=mode).train()  # train mode: LayerNorms, dropout off
    items = random_items(3, MAX_LEN)
    for seed in range(3):  # several sampled architectures
        weights = _sample(net, seed)
        for t in (0, 4, MAX_LEN - 2):
            with torch.no_grad():
                before = all_states(net, items, weights=weights)
                after = all_states(net, change_after(items, t), weights=weights)
            for a, b in zip(before, after, strict=True):
                torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(before[-1][:, t + 1 :], after[-1][:, t + 1 :])


def test_paper_supernet_with_a_centred_conv_leaks_the_label():
    net = tiny_supernet("paper").eval()
    conv3 = net.op_names.index("conv3")
    weights = [
        F.one_hot(torch.full((a.size(0),), conv3), len(net.op_names)).float() for a in net.alphas
    ]
    items = random_items(2, MAX_LEN)
    t = 4
    with torch.no_grad():
        before = net(items, weights).output[:, t]
        after = net(change_after(items, t), weights).output[:, t]
    assert not torch.allclose(before, after)


def test_padding_does_not_change_real_positions():
    net = tiny_supernet().eval()
    items = random_items(2, 6)
    with torch.no_grad():
        short = all_states(net, items)
        padded = all_states(net, left_pad(items, MAX_LEN - 6))
    for a, b in zip(short, padded, strict=True):
        torch.testing.assert_close(b[:, -6:], a, atol=1e-5, rtol=1e-5)
    for state in padded[:-1]:  # every hidden state (not the logits) is zero at padding
        assert state[:, : MAX_LEN - 6].abs().sum() == 0


def test_output_structure_and_prediction():
    net = tiny_supernet()
    out = net(random_items(2, MAX_LEN), _sample(net, 0))
    assert out.embedding.shape == (2, MAX_LEN, WIDTH)
    assert len(out.hidden_states) == 2 and out.output is out.hidden_states[-1]
    assert net.full_sort_predict(random_items(2, MAX_LEN)).shape == (2, NUM_ITEMS + 1)
    assert [tuple(a.shape) for a in net.alphas] == [(j + 1, len(net.op_names)) for j in range(3)]


def test_parameters_split_into_architecture_and_weights():
    net = tiny_supernet()
    arch = {id(p) for p in net.arch_parameters()}
    weights = {id(p) for p in net.weight_parameters()}
    assert not arch & weights
    assert arch | weights == {id(p) for p in net.parameters()}
    assert len(arch) == 3


def test_alphas_start_small_and_random():
    torch.manual_seed(0)
    net = Supernet(NUM_ITEMS, MAX_LEN, WIDTH, 2, 3, alpha_init_std=1e-2)
    values = torch.cat([a.detach().flatten() for a in net.alphas])
    assert 0 < values.abs().max() < 0.05 and values.std() > 1e-3


def test_gumbel_sample_is_exactly_one_hot_and_reaches_alpha():
    net = tiny_supernet()
    samples = _sample(net, 0, tau=0.5)
    for sample, alpha in zip(samples, net.alphas, strict=True):
        assert sample.shape == alpha.shape
        assert torch.equal(sample, F.one_hot(sample.argmax(-1), sample.size(-1)).float())
    costs = torch.arange(len(net.op_names), dtype=torch.float32)
    sum((s * costs).sum() for s in samples).backward()
    for alpha in net.alphas:
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0


def test_gradient_reaches_alpha_through_the_forward():
    net = tiny_supernet()
    out = net(random_items(2, MAX_LEN), _sample(net, 1))
    net.logits(out.output).logsumexp(-1).mean().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in net.alphas)


def test_same_generator_seed_gives_the_same_architecture():
    net = tiny_supernet()
    first, again, other = _sample(net, 7), _sample(net, 7), _sample(net, 8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_sample_frequencies_follow_softmax_alpha_at_tau_one():
    torch.manual_seed(0)
    net = Supernet(NUM_ITEMS, MAX_LEN, WIDTH, 1, 1)
    logits = torch.linspace(-1.5, 1.5, len(net.op_names))
    with torch.no_grad():
        net.alphas[0].copy_(logits.unsqueeze(0))
    generator = torch.Generator().manual_seed(0)
    draws = 3000
    counts = torch.zeros(len(net.op_names))
    with torch.no_grad():
        for _ in range(draws):
            counts += net.sample_architecture(1.0, generator)[0][0]
    torch.testing.assert_close(counts / draws, logits.softmax(0), atol=0.03, rtol=0)


def test_derived_weights_are_the_argmax_of_alpha():
    net = tiny_supernet()
    for w, alpha in zip(net.derived_weights(), net.alphas, strict=True):
        assert torch.equal(w.argmax(-1), alpha.argmax(-1))
        assert w.sum() == alpha.size(0) and not w.requires_grad


@pytest.mark.parametrize("op_set", ("causal", "paper"))
def test_full_and_single_path_give_the_same_output_for_the_same_sample(op_set):
    full = tiny_supernet(op_set, mode="full").train()
    single = tiny_supernet(op_set, mode="single_path").train()
    single.load_state_dict(full.state_dict())
    items = left_pad(random_items(3, MAX_LEN - 2), 2)
    for seed in range(3):
        weights = _sample(full, seed)
        for a, b in zip(
            all_states(full, items, weights=weights),
            all_states(single, items, weights=weights),
            strict=True,
        ):
            assert torch.equal(a, b)


def test_single_path_leaves_unsampled_ops_without_gradient():
    net = tiny_supernet(mode="single_path")
    weights = _sample(net, 0)
    net(random_items(2, MAX_LEN), weights).output.sum().backward()
    chosen = weights[0][0].argmax().item()
    edge = net.cells[0].nodes[0][0]
    for k, name in enumerate(net.op_names):
        grads = [p.grad for p in edge[name].parameters()]
        if grads:
            assert all(g is not None for g in grads) == (k == chosen), name


def test_temperature_schedule():
    assert [temperature(e) for e in (0, 4, 5, 9, 10, 14, 15)] == pytest.approx(
        [1.0, 1.0, 0.8, 0.8, 0.64, 0.64, 0.512]
    )
    assert temperature(7, initial=2.0, decay=0.5, every=2) == pytest.approx(2.0 * 0.5**3)


def test_alpha_summary_reports_probabilities_and_entropy():
    uniform = [torch.zeros(1, 4), torch.zeros(2, 4)]
    summary = alpha_summary(uniform)
    assert [e["name"] for e in summary["edges"]] == [
        "cell_input -> node_0",
        "cell_input -> node_1",
        "node_0 -> node_1",
    ]
    assert summary["mean_entropy"] == pytest.approx(math.log(4))
    assert summary["max_prob"] == pytest.approx(0.25)
    peaked = alpha_summary([torch.tensor([[10.0, 0.0, 0.0, 0.0]]), torch.zeros(2, 4)])
    assert peaked["max_prob"] > 0.99
    assert peaked["mean_max_prob"] == pytest.approx((peaked["max_prob"] + 0.5) / 3)
    assert peaked["mean_entropy"] < math.log(4)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="op set"):
        Supernet(NUM_ITEMS, MAX_LEN, WIDTH, 1, 1, op_set="mine")
    with pytest.raises(UserError, match="mode"):
        Supernet(NUM_ITEMS, MAX_LEN, WIDTH, 1, 1, mode="both")


def test_the_supernet_derives_its_genotype_from_its_alphas():
    net = tiny_supernet(op_set="paper")
    genotype = net.genotype()
    assert genotype == derive_genotype(list(net.alphas), net.op_names, "paper", 2, WIDTH)
    assert (genotype.op_set, genotype.cells, genotype.width, len(genotype.nodes)) == (
        "paper",
        2,
        WIDTH,
        3,
    )
