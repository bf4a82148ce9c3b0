"""The popularity baseline."""

import numpy as np
import pytest
import torch

from adarec.models.base import count_parameters
from adarec.models.pop import Popularity


def _fitted() -> Popularity:
    return Popularity(4).fit(np.array([0, 5, 1, 9, 3]))


def test_scores_are_the_counts_for_every_history():
    model = _fitted()
    items = torch.tensor([[0, 1, 2], [3, 4, 1]])
    scores = model.full_sort_predict(items)
    assert scores.shape == (2, 5)
    assert torch.all(torch.isneginf(scores[:, 0]))
    assert scores[:, 1:].tolist() == [[5.0, 1.0, 9.0, 3.0]] * 2
    torch.testing.assert_close(model.logits(model(items).output)[:, -1], scores)
    scores[0, 1] = 0.0  # callers may edit their scores without touching the model
    assert model.full_sort_predict(items)[0, 1] == 5.0


def test_no_trainable_parameters_and_counts_survive_a_state_dict():
    model = _fitted()
    assert count_parameters(model) == {"total": 0, "body": 0}
    restored = Popularity(4)
    restored.load_state_dict(model.state_dict())
    items = torch.tensor([[1, 2]])
    torch.testing.assert_close(restored.full_sort_predict(items), model.full_sort_predict(items))


def test_fit_accepts_tensors_and_rejects_the_wrong_length():
    model = Popularity(3).fit(torch.tensor([0, 1, 2, 3]))
    assert model.full_sort_predict(torch.tensor([[1]]))[0, 1:].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"\[4\]"):
        model.fit(np.array([1, 2, 3]))
