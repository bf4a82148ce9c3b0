"""Tiny supernets, noisy parameters and left-padded batches for the search-space tests."""

import torch
from torch import nn

from adarec.nas.supernet import Supernet

NUM_ITEMS = 20
MAX_LEN = 10
WIDTH = 8


def add_noise(model: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Noise on every parameter (padding rows, norms and node weights included).

    A fresh model has zeros (biases, node weights, the padding row) that could hide a leak
    from padding or from the future; a trained one does not.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model


def tiny_supernet(
    op_set: str = "causal", mode: str = "single_path", seed: int = 0, **kwargs
) -> Supernet:
    """2 cells of 3 nodes at width 8, dropout off, noisy parameters, in train mode."""
    torch.manual_seed(seed)
    options = {"dropout": 0.0, **kwargs}
    net = Supernet(NUM_ITEMS, MAX_LEN, WIDTH, 2, 3, op_set=op_set, mode=mode, **options)
    return add_noise(net, seed)


def random_items(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Real items 1..NUM_ITEMS, no padding: [batch, length]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=generator)


def left_pad(items: torch.Tensor, pads: int) -> torch.Tensor:
    return torch.cat([items.new_zeros(items.size(0), pads), items], dim=1)


def change_after(items: torch.Tensor, t: int) -> torch.Tensor:
    """The same histories with every item after position t replaced by another item."""
    changed = items.clone()
    changed[:, t + 1 :] = changed[:, t + 1 :] % NUM_ITEMS + 1
    return changed


def all_states(model, items: torch.Tensor, **kwargs) -> list[torch.Tensor]:
    """Embedding, every cell output, the final output and the logits of one forward."""
    out = model(items, **kwargs)
    return [out.embedding, *out.hidden_states, out.output, model.logits(out.output)]
