"""Process-group set-up for torchrun (DDP) and the single-process case alike.

Rank and world size come from the environment torchrun sets; a plain ``python -m adarec``
run is rank 0 of 1 and needs no process group.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist

from adarec.errors import UserError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Only rank 0 writes logs, checkpoints, metrics and reports."""
    return rank() == 0


def resolve_device(name: str = "auto") -> torch.device:
    """CUDA when present (one GPU per local rank under torchrun), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")  # "cpu:0" is the CPU too, and torch.load refuses it
    if device.type != "cuda":  # meta, mps, xla...: adarec runs on the CPU or CUDA only
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this machine has no usable GPU")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} GPUs"
        )
    if device.index is None:
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local_rank >= gpus:
            raise UserError(
                f"process {local_rank} of this machine has no GPU ({gpus} visible); "
                f"start at most {gpus} processes per machine (--nproc-per-node)"
            )
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: torch.device) -> bool:
    """Join the process group when launched by torchrun; returns whether it is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    atexit.register(_leave_process_group)
    return True


def _leave_process_group() -> None:
    # NCCL warns about (and may leak) a process group still alive when the process exits.
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list when not distributed)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (returns the tensor for chaining)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world_size()
    return tensor


def shard_range(n: int) -> range:
    """The contiguous slice of ``range(n)`` this rank evaluates (no duplicates, no gaps)."""
    size, r = world_size(), rank()
    per = (n + size - 1) // size
    return range(min(n, r * per), min(n, (r + 1) * per))
