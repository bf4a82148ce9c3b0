"""Building blocks shared by the teachers: masks, positions, causal convolution, attention.

Every block works on LEFT-padded sequences [B, L] (0 is padding) and hidden states
[B, L, H]. Nothing here branches on tensor values, so models built from these blocks can be
traced with ``torch.jit.trace`` and exported with ``torch.onnx.export``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def padding_mask(items: torch.Tensor) -> torch.Tensor:
    """True at real items, False at padding: [B, L] bool."""
    return items > 0


def item_positions(items: torch.Tensor) -> torch.Tensor:
    """Position of every item counted from the oldest real item (0); padding gets 0.

    Counting from the first real item, not from the left edge of the padded row, makes the
    outputs independent of how many pads precede a history, and gives position t of a
    training window the same index as the last item of those t + 1 items at inference.
    """
    return (padding_mask(items).long().cumsum(dim=1) - 1).clamp(min=0)


class PositionEmbedding(nn.Module):
    """Learned position embedding indexed by ``item_positions`` (max_len rows)."""

    def __init__(self, max_len: int, hidden_size: int):
        super().__init__()
        self.embedding = nn.Embedding(max_len, hidden_size)

    def forward(self, items: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of ``positions`` (default: ``item_positions(items)``)."""
        return self.embedding(item_positions(items) if positions is None else positions)


def init_weights(module: nn.Module) -> None:
    """normal(0, 0.02) weights and zero biases for linear, conv and embedding layers.

    LayerNorm keeps its (1, 0) initialisation; an embedding's padding row is zeroed again.
    Use with ``model.apply(init_weights)``.
    """
    if isinstance(module, nn.Linear | nn.Conv1d | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear | nn.Conv1d) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()


def push_window(queue: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Streaming inference: (the window ``queue`` + ``value`` [rows + 1, C], the queue one
    position later [rows, C]). ``queue`` holds an input's last values, oldest first."""
    window = torch.cat([queue, value.unsqueeze(0)])
    return window, window[1:]


class CausalConv1d(nn.Module):
    """Dilated convolution over time on [B, L, C_in] -> [B, L, C_out].

    The input is padded on the left only, by (kernel_size - 1) * dilation zeros, so the
    output at position t sees positions t, t - d, ..., never a later one.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.transpose(1, 2), (self.left_pad, 0))
        return self.conv(x).transpose(1, 2)

    def step(self, window: torch.Tensor) -> torch.Tensor:
        """The output [C_out] at the newest position from the inputs [left_pad + 1, C_in]
        ending there (streaming inference: one position per event)."""
        taps = window[:: self.conv.dilation[0]]  # [kernel, C_in]: t - (k-1)d, ..., t
        return torch.addmv(self.conv.bias, self.conv.weight.flatten(1), taps.t().flatten())


def attention_mask(items: torch.Tensor, causal: bool) -> torch.Tensor:
    """Which keys each query may attend to: [B, L, L] bool (query, key).

    Padding keys are hidden from every query; with ``causal`` later keys are hidden too.
    Every position may always attend to itself, so a padding query never has an empty
    row (an all-masked softmax is NaN); padding outputs are zeroed by the blocks anyway.
    """
    index = torch.arange(items.size(1), device=items.device)
    allowed = padding_mask(items).unsqueeze(1)  # [B, 1, L]: real keys
    if causal:
        allowed = allowed & (index.unsqueeze(0) <= index.unsqueeze(1))
    return allowed | (index.unsqueeze(0) == index.unsqueeze(1))


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention with an explicit boolean mask."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, H], ``allowed`` [B, L, L] bool from ``attention_mask``."""
        heads = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_size))
        q, k, v = heads.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_size]
        scores = q @ k.transpose(-1, -2) * self.head_size**-0.5
        # A finite minimum instead of -inf: masked keys get exactly zero weight either way.
        scores = scores.masked_fill(~allowed.unsqueeze(1), torch.finfo(scores.dtype).min)
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return self.out((weights @ v).transpose(1, 2).flatten(2))

    def step(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal attention of the newest position ``x`` [H] over itself and the cached
        earlier ones (``keys``, ``values`` [n, H], oldest first): its output [H] and the
        caches grown by one row (streaming inference, eval mode)."""
        heads, size = self.num_heads, self.head_size
        q, k, v = self.qkv(x).unflatten(0, (3, -1)).unbind(0)
        keys = torch.cat([keys, k.unsqueeze(0)])
        values = torch.cat([values, v.unsqueeze(0)])
        q = q.view(heads, 1, size)
        scores = q @ keys.view(-1, heads, size).permute(1, 2, 0) * size**-0.5  # [heads, 1, n]
        weights = torch.softmax(scores, dim=-1)
        mixed = (weights @ values.view(-1, heads, size).transpose(0, 1)).flatten()
        return self.out(mixed), keys, values


class TransformerBlock(nn.Module):
    """Post-LN transformer block: x = LN(x + attn(x)); x = LN(x + FFN(x)); padding -> 0.

    Post-LN (as in BERT and BERT4Rec) keeps every block output normalised, which suits the
    layer-wise distillation that reads these outputs.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, inner_size: int, dropout: float, activation: str
    ):
        super().__init__()
        activations = {"relu": nn.ReLU, "gelu": nn.GELU}
        if activation not in activations:
            raise ValueError(f"activation must be one of {sorted(activations)}, got {activation}")
        self.attention = MultiHeadSelfAttention(hidden_size, num_heads, dropout)
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            activations[activation](),
            nn.Linear(inner_size, hidden_size),
        )
        self.feed_forward_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``real`` is the [B, L, 1] float padding mask (1 at real items)."""
        x = self.attention_norm(x + self.dropout(self.attention(x, allowed)))
        x = self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))
        return x * real

    def step(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward`` at the newest position only, causally: its input ``x`` [H] and the
        key/value caches of the earlier positions -> its output [H] and the grown caches
        (streaming inference, eval mode: no dropout, and a real position needs no mask)."""
        attended, keys, values = self.attention.step(x, keys, values)
        x = self.attention_norm(x + attended)
        return self.feed_forward_norm(x + self.feed_forward(x)), keys, values
