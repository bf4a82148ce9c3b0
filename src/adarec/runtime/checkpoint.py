"""Checkpoint files: written atomically, and read back with one clear error when damaged."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from adarec.errors import UserError
from adarec.io import atomic_write_bytes

RESUME_HINT = "the previous checkpoint is kept: rerun with --resume to continue from it"


def save_checkpoint(path: Path, state: dict[str, Any], hint: str = RESUME_HINT) -> None:
    """``torch.save`` ``state`` to ``path``; the old file stays whole until the new one is.

    Serialised in memory first: torch's file writer reports a full disk as a RuntimeError
    (``unexpected pos``); the file write then fails as an OSError, a UserError naming
    ``path``, the cause and ``hint``.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getbuffer(), hint)


def load_checkpoint(
    path: Path,
    map_location: str | torch.device = "cpu",
    keys: tuple[str, ...] = (),
    hint: str = "re-run the stage that wrote it",
) -> dict[str, Any]:
    """A checkpoint holding at least ``keys``; a missing, truncated, empty or foreign file is
    a UserError naming it and saying what to do (``hint``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing; {hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch and pickle raise many kinds on bad bytes
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise UserError(
            f"{path} is damaged or not an adarec checkpoint ({reason}); {hint}"
        ) from None
    missing = [key for key in keys if not isinstance(state, dict) or key not in state]
    if missing:
        raise UserError(f"{path} is not the checkpoint adarec wrote (no {missing[0]!r}); {hint}")
    return state
