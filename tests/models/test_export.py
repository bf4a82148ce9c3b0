"""Every model's full_sort_predict can be traced (TorchScript) and exported (ONNX)."""

import numpy as np
import pytest
import torch
from torch import nn

from adarec.models.pop import Popularity
from adarec.serve.export import ScorePredict as Predict
from tests.models.helpers import NEURAL, NUM_ITEMS, left_pad, random_items, tiny_model


def _model(name: str) -> nn.Module:
    if name == "pop":
        return Popularity(NUM_ITEMS).fit(torch.arange(NUM_ITEMS + 1))
    return tiny_model(name)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    example = left_pad(random_items(2, 8, generator), 4)
    other = left_pad(random_items(5, 3, generator), 5)  # other batch, length and padding
    return example, other


@pytest.mark.parametrize("name", (*NEURAL, "pop"))
def test_trace_generalises_to_other_inputs(name):
    predict = Predict(_model(name)).eval()
    example, other = _inputs()
    with torch.no_grad():
        traced = torch.jit.trace(predict, example)
        torch.testing.assert_close(traced(other), predict(other))


@pytest.mark.parametrize("name", ("nextitnet", "bert4rec_causal", "pop"))
def test_onnx_export_matches(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    predict = Predict(_model(name)).eval()
    example, other = _inputs()
    path = tmp_path / "model.onnx"
    axes = {"items": {0: "batch", 1: "length"}, "scores": {0: "batch"}}
    torch.onnx.export(
        predict,
        (example,),
        str(path),
        input_names=["items"],
        output_names=["scores"],
        dynamic_axes=axes,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"items": other.numpy()})
    np.testing.assert_allclose(scores, predict(other).detach().numpy(), rtol=1e-4, atol=1e-5)
