"""NextItNet (Yuan et al., 2019): stacked causal dilated convolutions over the items."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adarec.config import ModelConfig
from adarec.models.base import SeqOutput, Teacher
from adarec.models.layers import CausalConv1d, init_weights, padding_mask, push_window


class ResidualBlock(nn.Module):
    """conv(d) -> LN -> ReLU -> conv(2d) -> LN -> ReLU -> dropout, added to the input.

    With ``residual_scale`` the branch is multiplied by a learnable scalar initialised to 0,
    so every block starts as the identity. Padding positions are zeroed after each conv
    stage: a real position whose receptive field reaches into the padding then sees zeros,
    exactly as if the padding were the convolution's own left padding.
    """

    def __init__(
        self,
        hidden_size: int,
        kernel_size: int,
        dilation: int,
        dropout: float,
        residual_scale: bool,
    ):
        super().__init__()
        self.conv1 = CausalConv1d(hidden_size, hidden_size, kernel_size, dilation)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.conv2 = CausalConv1d(hidden_size, hidden_size, kernel_size, 2 * dilation)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.scale = nn.Parameter(torch.zeros(1)) if residual_scale else None

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, H] with zeros at padding, ``real`` the [B, L, 1] float mask."""
        branch = torch.relu(self.norm1(self.conv1(x))) * real
        branch = self.dropout(torch.relu(self.norm2(self.conv2(branch))) * real)
        if self.scale is not None:
            branch = branch * self.scale
        return x + branch

    def step(
        self, x: torch.Tensor, queues: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward`` at the newest position only (streaming inference, eval mode).

        ``x`` [H] is the block input there; ``queues`` hold the last inputs of the two
        convolutions, [conv1.left_pad, H] (block inputs) and [conv2.left_pad, H] (first
        stage outputs), oldest first. Returns the block output [H] and the queues one
        position later.
        """
        window, first = push_window(queues[0], x)
        branch = torch.relu(self.norm1(self.conv1.step(window)))
        window, second = push_window(queues[1], branch)
        branch = torch.relu(self.norm2(self.conv2.step(window)))
        if self.scale is not None:
            branch = branch * self.scale
        return x + branch, [first, second]


class NextItNet(Teacher):
    """Item embedding (padding zeroed, dropout), then residual blocks of causal convs.

    Block i uses dilation ``dilations[i % len(dilations)]`` (and twice that in its second
    conv). ``hidden_states`` are the outputs of every ``distill_every``-th block; the paper
    preset (hidden 256, 16 blocks of [1, 4], distill_every 2) exposes 8 of them.
    Initialisation: normal(0, 0.02) for embedding, conv and output weights, zero biases.
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        hidden_size: int = 64,
        num_blocks: int = 2,
        dilations: list[int] | tuple[int, ...] = (1, 4),
        kernel_size: int = 3,
        residual_scale: bool = True,
        dropout: float = 0.2,
        distill_every: int = 1,
    ):
        super().__init__()
        if distill_every < 1 or not dilations:
            raise ValueError("NextItNet needs distill_every >= 1 and at least one dilation")
        self.num_items, self.max_len, self.hidden_size = num_items, max_len, hidden_size
        self.distill_every = distill_every
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            ResidualBlock(
                hidden_size, kernel_size, dilations[i % len(dilations)], dropout, residual_scale
            )
            for i in range(num_blocks)
        )
        self.output_layer = nn.Linear(hidden_size, num_items + 1)
        self.apply(init_weights)

    @classmethod
    def config_arguments(cls, cfg: ModelConfig) -> dict[str, Any]:
        return {
            **super().config_arguments(cfg),
            "dilations": list(cfg.dilations),
            "kernel_size": cfg.kernel_size,
            "residual_scale": cfg.residual_scale,
        }

    def forward(self, items: torch.Tensor) -> SeqOutput:
        real = padding_mask(items).unsqueeze(-1).float()
        x = self.dropout(self.item_embedding(items)) * real
        embedding = x
        outputs = []
        for block in self.blocks:
            x = block(x, real)
            outputs.append(x)
        hidden = outputs[self.distill_every - 1 :: self.distill_every]
        return SeqOutput(embedding=embedding, hidden_states=hidden, output=x)

    def step_state(self) -> list[torch.Tensor]:
        """The queues of ``step`` before the first item: zeros, as left padding is held."""
        weight = self.item_embedding.weight
        return [
            weight.new_zeros(conv.left_pad, self.hidden_size)
            for block in self.blocks
            for conv in (block.conv1, block.conv2)
        ]

    def step(
        self, item: int, position: int, queues: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward``'s output [H] at a new last item (internal id ``item``) from the queues
        of the items before it (``step_state``, two per block); the queues one position
        later. ``position`` is unused: NextItNet has no positions (an argument all
        streaming models share). Eval mode."""
        x = self.item_embedding.weight[item]
        later: list[torch.Tensor] = []
        for b, block in enumerate(self.blocks):
            x, block_queues = block.step(x, queues[2 * b : 2 * b + 2])
            later += block_queues
        return x, later
