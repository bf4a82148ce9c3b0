import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adarec.distill.losses import (
    embedding_loss,
    fixed_mapping_loss,
    fixed_mapping_pairs,
    hidden_distance_matrix,
    logit_kd_loss,
)

B, L, CS, CT, N = 3, 5, 4, 6, 7


def _mask() -> torch.Tensor:
    # Left padding, as the package feeds it; row 2 has a hole where the target is missing.
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :2] = False
    mask[1, :4] = False
    mask[2, 1] = False
    return mask


def _scramble(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with wild values at the masked-out positions only."""
    noise = 1e3 * torch.randn_like(x)
    return torch.where(mask.reshape(*mask.shape, *[1] * (x.dim() - 2)), x, noise)


def test_embedding_loss_with_identity_is_the_hand_mse_over_real_positions():
    torch.manual_seed(0)
    s, t, mask = torch.randn(B, L, CT), torch.randn(B, L, CT), _mask()
    expected = sum(
        ((s[b, p] - t[b, p]) ** 2).sum() for b in range(B) for p in range(L) if mask[b, p]
    ) / (mask.sum() * CT)
    assert torch.allclose(embedding_loss(s, t, nn.Identity(), mask), expected)


def test_embedding_loss_ignores_padding_values_and_sends_them_no_gradient():
    torch.manual_seed(0)
    proj, mask = nn.Linear(CS, CT), _mask()
    s = torch.randn(B, L, CS, requires_grad=True)
    t = torch.randn(B, L, CT)
    loss = embedding_loss(s, t, proj, mask)
    loss.backward()
    assert loss > 0
    assert torch.all(s.grad[~mask] == 0) and torch.any(s.grad[mask] != 0)
    scrambled = embedding_loss(_scramble(s.detach(), mask), _scramble(t, mask), proj, mask)
    assert torch.allclose(loss, scrambled)


def test_logit_kd_is_zero_for_equal_logits_and_positive_otherwise():
    torch.manual_seed(0)
    mask = _mask()
    logits = torch.randn(B, L, N)
    assert logit_kd_loss(logits, logits.clone(), mask).abs() < 1e-6
    assert logit_kd_loss(logits, torch.randn(B, L, N), mask) > 0.01


def test_logit_kd_matches_the_hand_formula_with_temperature():
    torch.manual_seed(0)
    mask, tau = _mask(), 2.0
    s, t = torch.randn(B, L, N), torch.randn(B, L, N)
    total = 0.0
    for b in range(B):
        for p in range(L):
            if mask[b, p]:
                p_t = F.softmax(t[b, p] / tau, dim=0)
                p_s = F.softmax(s[b, p] / tau, dim=0)
                total += (p_t * (p_t.log() - p_s.log())).sum()
    expected = total / mask.sum() * tau**2
    assert torch.allclose(logit_kd_loss(s, t, mask, temperature=tau), expected, atol=1e-6)


def test_logit_kd_ignores_padding_positions():
    torch.manual_seed(0)
    mask = _mask()
    s, t = torch.randn(B, L, N), torch.randn(B, L, N)
    base = logit_kd_loss(s, t, mask)
    assert torch.allclose(logit_kd_loss(_scramble(s, mask), _scramble(t, mask), mask), base)


def test_losses_are_zero_without_real_positions():
    mask = torch.zeros(B, L, dtype=torch.bool)
    s = torch.randn(B, L, N, requires_grad=True)
    loss = logit_kd_loss(s, torch.randn(B, L, N), mask)
    loss.backward()
    assert loss == 0 and torch.all(s.grad == 0)
    assert embedding_loss(torch.randn(B, L, CT), torch.randn(B, L, CT), nn.Identity(), mask) == 0
    hidden = [torch.randn(B, L, CT)]
    for distance in ("kl", "mse"):
        assert torch.all(hidden_distance_matrix(hidden, hidden, mask, distance) == 0)


def _naive_distance(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, distance: str):
    s, t = s[mask], t[mask]
    if distance == "mse":
        return ((s - t) ** 2).mean()
    log_s, log_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=-1).mean()


@pytest.mark.parametrize("distance", ["kl", "mse"])
def test_hidden_distance_matrix_matches_pairwise_computation(distance):
    torch.manual_seed(0)
    mask = _mask()
    student = [torch.randn(B, L, CT) for _ in range(2)]
    teacher = [torch.randn(B, L, CT) for _ in range(3)]
    dist = hidden_distance_matrix(student, teacher, mask, distance)
    assert dist.shape == (2, 3)
    for i, s in enumerate(student):
        for j, t in enumerate(teacher):
            assert torch.allclose(dist[i, j], _naive_distance(s, t, mask, distance), atol=1e-5)


@pytest.mark.parametrize("distance", ["kl", "mse"])
def test_hidden_distance_is_zero_on_identical_layers_and_ignores_padding(distance):
    torch.manual_seed(0)
    mask = _mask()
    student = [torch.randn(B, L, CT) for _ in range(2)]
    teacher = [student[0].clone(), torch.randn(B, L, CT)]
    dist = hidden_distance_matrix(student, teacher, mask, distance)
    assert dist[0, 0].abs() < 1e-5 and torch.all(dist[1] > 1e-3)
    scrambled = hidden_distance_matrix(
        [_scramble(h, mask) for h in student], [_scramble(h, mask) for h in teacher], mask, distance
    )
    assert torch.allclose(dist, scrambled, atol=1e-5)


def test_hidden_distance_rejects_an_unknown_distance():
    hidden = [torch.randn(B, L, CT)]
    with pytest.raises(ValueError, match="cosine"):
        hidden_distance_matrix(hidden, hidden, _mask(), "cosine")


def test_skip_mapping_is_uniform_and_rounds_halves_up():
    assert fixed_mapping_pairs(4, 8, "skip") == [(0, 1), (1, 3), (2, 5), (3, 7)]
    # (i+1) * 6/4 = 1.5, 3, 4.5, 6 -> 2, 3, 5, 6 (halves up) -> 0-based teacher 1, 2, 4, 5.
    assert fixed_mapping_pairs(4, 6, "skip") == [(0, 1), (1, 2), (2, 4), (3, 5)]
    assert fixed_mapping_pairs(3, 8, "skip") == [(0, 2), (1, 4), (2, 7)]
    assert fixed_mapping_pairs(3, 1, "skip") == [(0, 0), (1, 0), (2, 0)]


def test_last_mapping_uses_the_last_teacher_layers_one_to_one():
    assert fixed_mapping_pairs(4, 8, "last") == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert fixed_mapping_pairs(3, 2, "last") == [(0, 0), (1, 0), (2, 1)]


def test_fixed_mapping_loss_averages_the_picked_entries():
    dist = torch.arange(32, dtype=torch.float32).reshape(4, 8)
    assert fixed_mapping_loss(dist, "skip") == (1 + 11 + 21 + 31) / 4
    assert fixed_mapping_loss(dist, "last") == (4 + 13 + 22 + 31) / 4
    with pytest.raises(ValueError, match="middle"):
        fixed_mapping_loss(dist, "middle")
