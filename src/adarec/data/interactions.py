"""Raw interaction logs as read from a file, before any filtering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Interactions:
    """One row per interaction, in file order. Ids are raw strings; timestamps in seconds."""

    users: np.ndarray  # object array of str
    items: np.ndarray  # object array of str
    timestamps: np.ndarray  # float64
    ratings: np.ndarray | None = None  # float64, or None when the source has no ratings

    def __len__(self) -> int:
        return len(self.users)
