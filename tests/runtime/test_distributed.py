"""Device names: a device this machine lacks is a UserError, not a crash in training."""

import pytest
import torch

from adarec.errors import UserError
from adarec.runtime.distributed import resolve_device


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="no usable GPU"):
        resolve_device("cuda:0")


def test_devices_adarec_cannot_run_on_are_user_errors():
    for name in ("meta", "mps", "", "tpu", "cuda:x"):
        with pytest.raises(UserError, match="unknown device"):
            resolve_device(name)
    # The CPU by any index is the CPU (torch.load refuses a map location "cpu:0").
    assert resolve_device("cpu:0") == torch.device("cpu")
