"""The candidate operations of an edge: two op sets over hidden states [B, L, C].

Every op maps [B, L, C] -> [B, L, C] (convolutions and pools transpose to [B, C, L]
internally). Ops are pure: the cell applies ReLU to an edge's input, so an edge computes
``op(relu(x))`` (see ``adarec.nas.cells``).

``CAUSAL_OPS`` (adarec's default) is leak-free: every op pads on the LEFT only, so the
output at position t depends on positions <= t alone. Its convolutions are followed by a
per-position LayerNorm over channels instead of BatchNorm, because BatchNorm's batch
statistics in training mode mix every position of the batch, later positions included.

``PAPER_OPS`` is the paper's space of 10 ops, kept for comparison. Six of them are centred
("same" padding: ``conv3``, ``dil_conv3``, ``conv5``, ``dil_conv5``, ``max_pool3``,
``avg_pool3``) and LEAK the label during next-item training: position t sees item t + 1,
which is exactly what position t must predict, so a search rewards these ops for seeing
the answer. Its convolutions are followed by BatchNorm as in the paper, which in training
mode also lets every position see batch statistics of later positions (even after the
causal dilated convs of this set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adarec.errors import UserError

CAUSAL_OPS: tuple[str, ...] = (
    "causal_conv3",
    "causal_conv5",
    "causal_dil_conv3",
    "causal_dil_conv5",
    "causal_max_pool3",
    "causal_avg_pool3",
    "skip",
    "none",
)
PAPER_OPS: tuple[str, ...] = (
    "conv3",
    "dil_conv3",
    "causal_dil_conv3",
    "conv5",
    "dil_conv5",
    "causal_dil_conv5",
    "max_pool3",
    "avg_pool3",
    "skip",
    "none",
)
OP_SETS: dict[str, tuple[str, ...]] = {"causal": CAUSAL_OPS, "paper": PAPER_OPS}
ALL_OPS: tuple[str, ...] = tuple(dict.fromkeys(CAUSAL_OPS + PAPER_OPS))

# name -> (kernel size, dilation) of the convolutions of both sets.
_CONVS = {"conv3": (3, 1), "conv5": (5, 1), "dil_conv3": (3, 2), "dil_conv5": (5, 2)}


@dataclass(frozen=True)
class StepSpec:
    """What a compiled per-event step needs of one causal op (``adarec.nas.compiled_step``).

    ``kind``: "skip", "max_pool", "avg_pool" or "conv". A pool reduces its input at
    t - 2 .. t. A convolution multiplies ``weight`` [C_out, kernel x C_in] by its taps
    stacked oldest first (tap 0 at t - (kernel - 1) x dilation, the last at t) and applies
    LayerNorm (``norm_weight``, ``norm_bias``, ``eps``).
    """

    kind: str
    reach: int
    kernel: int = 1
    dilation: int = 1
    weight: np.ndarray | None = None
    norm_weight: np.ndarray | None = None
    norm_bias: np.ndarray | None = None
    eps: float = 0.0


def step_spec(op: nn.Module) -> StepSpec:
    """The compiled step of a student's op; UserError for an op that cannot stream.

    Every op a student can hold must answer here (tests build every op of the causal set):
    an op without a step cannot be served per event.
    """
    if isinstance(op, nn.Identity):
        return StepSpec("skip", 0)
    if isinstance(op, ConvOp | PoolOp):
        return op.step_spec()
    raise UserError(f"{type(op).__name__} has no per-event step: it cannot be served per event")


def left_reach(name: str) -> int:
    """How far back an op reads: its output at t depends on positions t - reach .. t (and,
    for the paper's centred ops, on later ones too)."""
    base = name.removeprefix("causal_")
    causal = name.startswith("causal_")
    if base in _CONVS:
        kernel, dilation = _CONVS[base]
        reach = (kernel - 1) * dilation
        return reach if causal else reach // 2
    if base in ("max_pool3", "avg_pool3"):
        return 2 if causal else 1
    return 0  # skip and none read position t alone (or nothing)


class ConvOp(nn.Module):
    """Convolution over time without bias, then a norm; [B, L, C] -> [B, L, C].

    ``causal``: (kernel - 1) * dilation zeros on the left only, so position t sees
    t, t - d, ..., never a later one; otherwise centred "same" padding (sees the future).
    ``norm``: "layer" (per-position LayerNorm over channels: no mixing across positions)
    or "batch" (the paper's BatchNorm: in training mode its statistics mix all positions).
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, causal: bool, norm: str):
        super().__init__()
        reach = (kernel_size - 1) * dilation
        self.padding = (reach, 0) if causal else (reach // 2, reach - reach // 2)
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, bias=False)
        self.norm = nn.LayerNorm(channels) if norm == "layer" else nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.conv(F.pad(x.transpose(1, 2), self.padding)))

    def normalise(self, y: torch.Tensor) -> torch.Tensor:
        """The norm after the convolution: its output [B, C, L] -> [B, L, C]."""
        if isinstance(self.norm, nn.BatchNorm1d):
            return self.norm(y).transpose(1, 2)
        return self.norm(y.transpose(1, 2))

    @property
    def reach(self) -> int:
        """How far back a causal convolution reads: positions t - reach .. t."""
        return self.padding[0]

    def of_windows(self, windows: torch.Tensor, reach: int) -> torch.Tensor:
        """The causal convolution and its norm from the windows [B, L, C, reach + 1] of
        its input (the input at t - reach .. t; ``reach`` >= its own, a Python int so that
        a traced graph holds constant slices): its taps times its weight, [B, L, C].

        Serving only: the same as ``forward`` up to rounding, without conv1d's pad,
        transposes and im2col (``_slow_conv2d`` at small sizes).
        """
        if self.padding[1] or reach < self.reach:
            raise ValueError("only a causal convolution reads windows at least its reach")
        dilation = self.conv.dilation[0]
        # [B, L, C, kernel], oldest tap first: the order of the weight's last axis.
        skip = reach - self.reach
        taps = windows[..., skip::dilation] if skip or dilation > 1 else windows
        weight = self.conv.weight.flatten(1).t()  # [C x kernel, C], row c x kernel + k
        if torch.jit.is_tracing():
            weight = weight.contiguous()  # a frozen graph folds it into one constant
        y = taps.flatten(2) @ weight
        if isinstance(self.norm, nn.BatchNorm1d):
            return self.norm(y.transpose(1, 2)).transpose(1, 2)
        return self.norm(y)

    def step(self, window: torch.Tensor) -> torch.Tensor:
        """The output at the newest position from the inputs [reach + 1, C] ending there.

        Streaming (one position per event); causal LayerNorm convolutions only.
        """
        if self.padding[1] or not isinstance(self.norm, nn.LayerNorm):
            raise ValueError("only causal LayerNorm convolutions compute one position at a time")
        taps = window[:: self.conv.dilation[0]]  # [kernel, C]: t - (k-1)d, ..., t
        return self.norm(torch.mv(self.conv.weight.flatten(1), taps.t().flatten()))

    def step_spec(self) -> StepSpec:
        """This convolution for the compiled step (causal LayerNorm convolutions only)."""
        if self.padding[1] or not isinstance(self.norm, nn.LayerNorm):
            raise UserError("only causal LayerNorm convolutions compute one position at a time")
        weight = self.conv.weight.detach().cpu().float()  # [C_out, C_in, kernel]
        return StepSpec(
            "conv",
            self.reach,
            kernel=weight.shape[2],
            dilation=self.conv.dilation[0],
            weight=weight.permute(0, 2, 1).reshape(weight.shape[0], -1).numpy(),
            norm_weight=self.norm.weight.detach().cpu().float().numpy(),
            norm_bias=self.norm.bias.detach().cpu().float().numpy(),
            eps=float(self.norm.eps),
        )


class PoolOp(nn.Module):
    """Max or average pooling over a window of 3 positions, stride 1, same length.

    Causal: the window ends at the current position (positions t-2, t-1, t), with zeros
    padded on the left; the average always divides by 3. Zeros match what the model holds
    at padding positions (zeroed states), so a history's outputs do not depend on how many
    pads precede it; and as edge inputs pass through ReLU (>= 0), a zero never wins a max
    over a real value. Centred (paper): window t-1..t+1; the average counts only the
    positions inside the sequence and the max ignores the padding.
    """

    reach = 2  # how far back a causal pool reads: positions t - 2 .. t

    def __init__(self, kind: str, causal: bool):
        super().__init__()
        self.kind = kind
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal:
            padded = F.pad(x, (0, 0, 2, 0))
            if not x.requires_grad and not torch.onnx.is_in_onnx_export():
                # Inference: the windows as one view [B, L, C, 3] and one reduction, 3 ops
                # where the shifted views below take 6 to 10 (each slice of [:, a:b] is two
                # in a traced graph). At batch 1, where each op's dispatch is the cost, a
                # pool takes 14-17 us against 25-29 us; at batch 256 the same or faster.
                # (ONNX export has no unfold for a dynamic batch: the views below.)
                return self.of_windows(padded.unfold(1, 3, 1), 2)
            # Three shifted views of [B, L, C] instead of pool1d on a transposed tensor: the
            # same values, several times faster on CPU (pool1d takes a slow strided path).
            now, prev, prev2 = padded[:, 2:], padded[:, 1:-1], padded[:, :-2]
            if self.kind == "max":
                if not x.requires_grad:
                    # Two pairwise maxima copy nothing; 1.8x faster than the stack below
                    # at batch 256 (measured on a [256, 25, 64] input).
                    return torch.maximum(torch.maximum(now, prev), prev2)
                # Training: one reduction over the stacked views, forward + backward 3x
                # faster than two pairwise maxima, whose backward (masked fills and wheres)
                # took a third of a retraining step of the ml-1m pooling student
                # (benchmarks/profile_steps.py).
                return torch.stack((now, prev, prev2)).amax(dim=0)
            return (now + prev + prev2) / 3.0
        x = x.transpose(1, 2)
        if self.kind == "max":
            pooled = F.max_pool1d(x, 3, 1, padding=1)
        else:
            pooled = F.avg_pool1d(x, 3, 1, padding=1, count_include_pad=False)
        return pooled.transpose(1, 2)

    def of_windows(self, windows: torch.Tensor, reach: int) -> torch.Tensor:
        """The causal pool from the windows [B, L, C, reach + 1] of its input (the input
        at t - reach .. t, ``reach`` >= 2): a reduction of the last 3 taps."""
        last3 = windows[..., reach - 2 :] if reach > 2 else windows
        return last3.amax(dim=-1) if self.kind == "max" else last3.mean(dim=-1)

    def step(self, window: torch.Tensor) -> torch.Tensor:
        """The output at the newest position from the inputs [3, C] at t - 2, t - 1, t."""
        if not self.causal:
            raise ValueError("a centred pool reads the next position: it cannot stream")
        # One reduction (not two pairwise ops): at batch 1 each op's dispatch is the cost.
        return window.amax(dim=0) if self.kind == "max" else window.mean(dim=0)

    def step_spec(self) -> StepSpec:
        """This pool for the compiled step (causal pools only)."""
        if not self.causal:
            raise UserError("a centred pool reads the next position: it cannot stream")
        return StepSpec(f"{self.kind}_pool", self.reach)


class Zero(nn.Module):
    """The "none" op: zeros of the input's shape (the edge is absent)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def make_op(name: str, channels: int, op_set: str | None = None) -> nn.Module:
    """A fresh op by name, mapping [B, L, channels] -> [B, L, channels].

    ``op_set`` matters only for the names both sets share: ``causal_dil_conv3/5`` are
    followed by LayerNorm in the causal set and by BatchNorm in the paper set. None: the
    causal set's version where a name is in both.
    """
    if op_set is not None and op_set not in OP_SETS:
        raise UserError(f"unknown op set {op_set!r}; choose one of {', '.join(OP_SETS)}")
    names = OP_SETS[op_set] if op_set is not None else ALL_OPS
    if name not in names:
        raise UserError(f"unknown operation {name!r}; known operations: {', '.join(names)}")
    if name == "skip":
        return nn.Identity()
    if name == "none":
        return Zero()
    causal = name.startswith("causal_")
    base = name.removeprefix("causal_")
    if base in _CONVS:
        # Causal set: LayerNorm, per position over channels. BatchNorm's statistics in
        # training mode are taken over every position of the batch, later ones included,
        # so it would leak the future even after a left-padded conv (paper set only).
        norm = "batch" if op_set == "paper" or name not in CAUSAL_OPS else "layer"
        return ConvOp(channels, *_CONVS[base], causal=causal, norm=norm)
    return PoolOp(base.split("_")[0], causal)
