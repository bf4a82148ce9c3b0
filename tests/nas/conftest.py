import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors run faster on one thread, above all on a shared, busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
