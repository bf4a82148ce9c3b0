"""Tiny teachers and left-padded batches for the model tests."""

import torch

from adarec.models.base import SequentialRecommender
from adarec.models.bert4rec import BERT4Rec
from adarec.models.nextitnet import NextItNet
from adarec.models.sasrec import SASRec

NUM_ITEMS = 30
MAX_LEN = 16
NEURAL = ("nextitnet", "sasrec", "bert4rec_causal", "bert4rec_bidirectional")
CAUSAL = ("nextitnet", "sasrec", "bert4rec_causal")


def tiny_model(
    name: str, seed: int = 0, num_items: int = NUM_ITEMS, noise: float = 0.3, **overrides
) -> SequentialRecommender:
    """A small teacher in eval mode (dropout off); ``name`` from ``NEURAL``.

    ``noise`` is added to every parameter (0: the fresh initialisation).
    """
    torch.manual_seed(seed)
    if name == "nextitnet":
        kwargs = {"hidden_size": 16, "num_blocks": 4, "dilations": [1, 2], "distill_every": 2}
        model = NextItNet(num_items, MAX_LEN, **{**kwargs, **overrides})
    else:
        kwargs = {"hidden_size": 16, "num_blocks": 2, "num_heads": 2, "inner_size": 32}
        kwargs.update(overrides)
        if name == "sasrec":
            model = SASRec(num_items, MAX_LEN, **kwargs)
        else:
            model = BERT4Rec(num_items, MAX_LEN, causal=name == "bert4rec_causal", **kwargs)
    # Noise on every parameter, biases, LayerNorms, residual scales and the padding rows
    # included: a trained model has none of the zeros of a fresh one that could hide a
    # leak from padding or from the future.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(noise * torch.randn_like(parameter))
    return model.eval()


def random_items(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """Real items 1..NUM_ITEMS, no padding: [batch, length]."""
    return torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=generator)


def left_pad(items: torch.Tensor, pads: int) -> torch.Tensor:
    """Prepend ``pads`` padding columns."""
    return torch.cat([items.new_zeros(items.size(0), pads), items], dim=1)


def all_states(model: SequentialRecommender, items: torch.Tensor) -> list[torch.Tensor]:
    """Embedding, every hidden state, final output and logits of one forward pass."""
    with torch.no_grad():
        out = model(items)
        return [out.embedding, *out.hidden_states, out.output, model.logits(out.output)]
