"""Logging to the console (unless quiet) and to the run directory's log file (rank 0 only)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from adarec.runtime import distributed as dist

LOGGER = "adarec"


def setup_logging(run_dir: Path | None = None, quiet: bool = False) -> logging.Logger:
    """(Re)configure the ``adarec`` logger; safe to call once per command or test."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    if dist.is_main() and not quiet:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        logger.addHandler(console)
    if dist.is_main() and run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(run_dir) / "log.txt")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger
