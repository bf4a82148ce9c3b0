"""Dataset statistics: sizes, density, sequence lengths and what each filter removed."""

from __future__ import annotations

from typing import Any

import numpy as np

from adarec.data.preprocess import PreparedData

PERCENTILES = (10, 25, 75, 90, 99)


def describe(data: PreparedData) -> dict[str, Any]:
    """Plain-number statistics of prepared data (JSON-serialisable)."""
    lengths = data.lengths()
    return {
        "name": data.name,
        "users": data.num_users,
        "items": data.num_items,
        "interactions": int(lengths.sum()),
        "density": float(lengths.sum() / (data.num_users * data.num_items)),
        "length": {
            "min": int(lengths.min()),
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "max": int(lengths.max()),
            **{f"p{q}": float(np.percentile(lengths, q)) for q in PERCENTILES},
        },
        "filter_log": data.filter_log,
    }


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"


def format_stats(d: dict[str, Any]) -> str:
    """A readable text table of ``describe``'s output."""
    lines = [f"dataset {d['name']}"]
    for key in ("users", "items", "interactions", "density"):
        lines.append(f"  {key:<22}{_number(d[key]):>12}")
    lines.append("  sequence length")
    for key, value in d["length"].items():
        lines.append(f"    {key:<20}{_number(value):>12}")
    if d["filter_log"]:
        lines.append("  filters (rows / users / items, before -> after)")
        for entry in d["filter_log"]:
            counts = "  ".join(
                f"{entry[f'{k}_before']:,} -> {entry[f'{k}_after']:,}"
                for k in ("rows", "users", "items")
            )
            lines.append(f"    {entry['step']}: {counts}")
    return "\n".join(lines)
