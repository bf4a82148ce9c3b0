import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from adarec.distill import emd as emd_module
from adarec.distill.emd import EMDLayerMapper, emd_flow, reweight
from adarec.distill.losses import hidden_distance_matrix

B, L, C = 2, 4, 5


def _lp_transport(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> float:
    """Optimal transport cost by a generic LP over the flattened plan."""
    s, t = cost.shape
    rows = np.zeros((s, s * t))
    cols = np.zeros((t, s * t))
    for i in range(s):
        rows[i, i * t : (i + 1) * t] = 1
    for j in range(t):
        cols[j, j::t] = 1
    res = linprog(
        cost.ravel(),
        A_eq=np.vstack([rows, cols]),
        b_eq=np.concatenate([a, b]),
        bounds=(0, None),
        method="highs",
    )
    assert res.success
    return res.fun


@pytest.mark.parametrize("shape", [(1, 5), (2, 3), (3, 2), (4, 8), (5, 5)])
def test_emd_flow_is_the_optimal_transport_plan(shape):
    rng = np.random.default_rng(sum(shape))
    a, b = rng.random(shape[0]) + 0.1, rng.random(shape[1]) + 0.1
    cost = rng.random(shape)
    flow = emd_flow(a * 3.0, torch.tensor(b), cost)  # unnormalised weights, mixed types
    a, b = a / a.sum(), b / b.sum()
    assert flow.shape == shape and flow.dtype == np.float64
    assert np.all(flow >= -1e-12)
    assert np.allclose(flow.sum(axis=1), a) and np.allclose(flow.sum(axis=0), b)
    assert math.isclose((flow * cost).sum(), _lp_transport(a, b, cost), abs_tol=1e-9)


def test_emd_flow_rejects_a_cost_of_the_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        emd_flow(np.ones(2), np.ones(3), np.ones((3, 2)))


def test_reweight_matches_the_hand_worked_example():
    flow = torch.tensor([[0.3, 0.2], [0.1, 0.4]], dtype=torch.float64)
    dist = torch.tensor([[1.0, 2.0], [3.0, 0.5]], dtype=torch.float64)
    # Student side, weights (0.5, 0.5):
    #   c = (0.3*1 + 0.2*2, 0.1*3 + 0.4*0.5) = (0.7, 0.5)
    #   w = c / w = (1.4, 1.0);  w = sum(w) / w = (2.4/1.4, 2.4/1.0) = (1.714286, 2.4)
    #   softmax(w / 10) = softmax(0.1714286, 0.24)
    student = reweight(torch.tensor([0.5, 0.5], dtype=torch.float64), flow, dist, "student")
    first = 1 / (1 + math.exp(0.24 - 2.4 / 1.4 / 10))
    assert torch.allclose(student, torch.tensor([first, 1 - first], dtype=torch.float64))
    assert math.isclose(first, 0.482864, abs_tol=1e-6)
    # Teacher side, weights (0.4, 0.6):
    #   c = (0.3*1 + 0.1*3, 0.2*2 + 0.4*0.5) = (0.6, 0.6)
    #   w = c / w = (1.5, 1.0);  w = sum(w) / w = (2.5/1.5, 2.5/1.0) = (1.666667, 2.5)
    #   softmax(w / 10) = softmax(0.1666667, 0.25)
    teacher = reweight(torch.tensor([0.4, 0.6], dtype=torch.float64), flow, dist, "teacher")
    first = 1 / (1 + math.exp(0.25 - 2.5 / 1.5 / 10))
    assert torch.allclose(teacher, torch.tensor([first, 1 - first], dtype=torch.float64))
    assert math.isclose(first, 0.479179, abs_tol=1e-6)


def test_reweight_survives_a_zero_cost_layer():
    flow = torch.tensor([[0.5, 0.0], [0.0, 0.5]], dtype=torch.float64)
    dist = torch.tensor([[0.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    weights = reweight(torch.tensor([0.5, 0.5], dtype=torch.float64), flow, dist, "student")
    assert torch.all(torch.isfinite(weights))
    assert weights[0] > 0.99  # the layer that transports for free takes the weight


def _hidden(seed: int, count: int, requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, C, generator=g, requires_grad=requires_grad) for _ in range(count)]


def _mask() -> torch.Tensor:
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :2] = False
    return mask


def test_mapper_loss_is_flow_weighted_distance_and_gradient_reaches_the_student():
    mapper = EMDLayerMapper(2, 3).eval()
    student, teacher, mask = _hidden(0, 2, requires_grad=True), _hidden(1, 3), _mask()
    loss, info = mapper(student, teacher, mask)
    flow = info["flow"]
    assert isinstance(flow, np.ndarray) and flow.shape == (2, 3)
    loss.backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in student)

    # The flow is a constant: the gradient is that of sum(flow * d) with flow fixed.
    copies = [h.detach().clone().requires_grad_(True) for h in student]
    dist = hidden_distance_matrix(copies, teacher, mask, "kl")
    expected = (torch.as_tensor(flow, dtype=dist.dtype) * dist).sum()
    expected.backward()
    assert torch.allclose(loss, expected)
    for h, c in zip(student, copies, strict=True):
        assert torch.allclose(h.grad, c.grad)


def test_mapper_updates_weights_in_training_only():
    mapper = EMDLayerMapper(2, 3, distance="mse")
    student, teacher, mask = _hidden(0, 2), _hidden(1, 3), _mask()
    uniform_s, uniform_t = mapper.student_weights.clone(), mapper.teacher_weights.clone()
    mapper.eval()
    mapper(student, teacher, mask)
    assert torch.equal(mapper.student_weights, uniform_s)
    assert torch.equal(mapper.teacher_weights, uniform_t)
    mapper.train()
    _, info = mapper(student, teacher, mask)
    dist = hidden_distance_matrix(student, teacher, mask, "mse")
    assert torch.allclose(
        mapper.student_weights, reweight(uniform_s, info["flow"], dist, "student")
    )
    assert torch.allclose(
        mapper.teacher_weights, reweight(uniform_t, info["flow"], dist, "teacher")
    )
    assert not torch.allclose(mapper.student_weights, uniform_s)
    assert not torch.allclose(mapper.teacher_weights, uniform_t)
    assert math.isclose(float(mapper.student_weights.sum()), 1.0)


def test_mapper_weights_are_saved_and_restored():
    mapper = EMDLayerMapper(2, 3).train()
    mapper(_hidden(0, 2), _hidden(1, 3), _mask())
    state = mapper.state_dict()
    assert set(state) == {"student_weights", "teacher_weights"}
    restored = EMDLayerMapper(2, 3)
    restored.load_state_dict(state)
    assert torch.equal(restored.student_weights, mapper.student_weights)
    assert torch.equal(restored.teacher_weights, mapper.teacher_weights)
    assert not torch.equal(restored.student_weights, EMDLayerMapper(2, 3).student_weights)


def test_mapper_loss_ignores_padding_positions():
    mapper = EMDLayerMapper(2, 3).eval()
    student, teacher, mask = _hidden(0, 2), _hidden(1, 3), _mask()
    loss, _ = mapper(student, teacher, mask)
    noisy = [torch.where(mask[..., None], h, 1e3 * torch.randn_like(h)) for h in student]
    noisy_loss, _ = mapper(noisy, teacher, mask)
    assert torch.allclose(loss, noisy_loss)


def test_mapper_solves_the_flow_on_the_rank_averaged_distances(monkeypatch):
    """Every rank must see the same (averaged) matrix; the loss keeps the local distances."""
    other_rank = torch.tensor([[5.0, 0.0, 5.0], [0.0, 5.0, 5.0]])
    seen = []

    def fake_all_reduce_mean(tensor):
        seen.append(tensor)
        tensor.add_(other_rank).div_(2)
        return tensor

    monkeypatch.setattr(emd_module.distributed, "all_reduce_mean", fake_all_reduce_mean)
    mapper = EMDLayerMapper(2, 3, distance="mse").train()
    student, teacher, mask = _hidden(0, 2, requires_grad=True), _hidden(1, 3), _mask()
    local = hidden_distance_matrix(student, teacher, mask, "mse")
    uniform_s = mapper.student_weights.clone()
    loss, info = mapper(student, teacher, mask)

    assert len(seen) == 1 and not seen[0].requires_grad
    averaged = (local.detach() + other_rank) / 2
    expected_flow = emd_flow(uniform_s, torch.full((3,), 1 / 3), averaged.double().numpy())
    assert np.allclose(info["flow"], expected_flow)
    assert torch.allclose(loss, (torch.as_tensor(info["flow"]).float() * local).sum())
    assert torch.allclose(
        mapper.student_weights, reweight(uniform_s, info["flow"], averaged, "student")
    )


def test_mapper_rejects_a_wrong_layer_count():
    with pytest.raises(ValueError, match="built for 2 and 3"):
        EMDLayerMapper(2, 3)(_hidden(0, 3), _hidden(1, 3), _mask())


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        mapper = EMDLayerMapper(2, 3).train()
        for step in range(3):  # each rank sees different hidden states
            _, info = mapper(_hidden(10 * rank + step, 2), _hidden(100 + step, 3), _mask())
        torch.save({"flow": info["flow"], "state": mapper.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_mapper_weights_stay_identical_across_ddp_ranks(tmp_path):
    torch.multiprocessing.spawn(
        _ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert np.array_equal(r0["flow"], r1["flow"])
    for key in ("student_weights", "teacher_weights"):
        assert torch.equal(r0["state"][key], r1["state"][key])
    # The ranks' inputs differed, so the weights did move, from the same shared matrix.
    assert not torch.equal(r0["state"]["student_weights"], EMDLayerMapper(2, 3).student_weights)
