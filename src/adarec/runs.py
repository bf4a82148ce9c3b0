"""Model files in run directories: save a trained model with what is needed to rebuild it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from adarec.config import Config, load_config, to_dict
from adarec.errors import UserError
from adarec.io import read_json, read_text
from adarec.models.base import SequentialRecommender
from adarec.registry import model_from_spec
from adarec.runtime import distributed as dist
from adarec.runtime.checkpoint import load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from adarec.data.preprocess import PreparedData

MODEL_FILE = "model.pt"
ITEMS_FILE = "items.json"  # raw item id of each internal id (index 0: padding)
DATA_FILE = "data.json"  # statistics and the fingerprint of the data the run trained on
TEST_RANKS_FILE = "test_ranks.json"  # each test user's full-ranking rank, in user order
# What serving, bench and the report need from the data, written with it at training time so
# that they never prepare the data again (a run directory can be served alone, or moved):
POPULARITY_FILE = "popularity.json"  # training interactions per internal id (index 0: padding)
HISTORIES_FILE = "test_histories.json"  # real test inputs (internal ids) that latency is timed on


def serving_file_hint(name: str) -> str:
    """What to do when a serving file (``POPULARITY_FILE``, ``HISTORIES_FILE``) is missing
    or damaged: ``adarec evaluate`` writes it again from the run's own, checked data."""
    return (
        f"run `adarec evaluate RUN` (after removing a damaged copy): it writes {name} from "
        "the run's data (runs from before it was kept lack it)"
    )


def save_model(run_dir: Path, model: SequentialRecommender, filename: str = MODEL_FILE) -> None:
    """The weights with the model's spec (``to_spec``), which says how to rebuild it."""
    if dist.is_main():
        state = {"spec": model.to_spec(), "state_dict": model.state_dict()}
        # The stage's training checkpoints are kept: --resume writes the model again.
        hint = "rerun the stage with --resume to write it from its checkpoints"
        save_checkpoint(Path(run_dir) / filename, state, hint)


def load_run_model(
    run_dir: Path, device: torch.device | str = "cpu", filename: str = MODEL_FILE
) -> tuple[SequentialRecommender, dict]:
    """The trained model of a run directory (teacher, student or supernet), in eval mode."""
    path = Path(run_dir) / filename
    if not path.exists():
        raise UserError(f"{run_dir} has no trained model ({filename}); is the run finished?")
    hint = "re-run the stage that wrote it (remove its metrics.json first)"
    state = load_checkpoint(path, device, keys=("spec", "state_dict"), hint=hint)
    try:
        model = model_from_spec(state["spec"])
        model.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError):
        raise UserError(f"{path} is damaged (its weights do not fit its model); {hint}") from None
    return model.to(device).eval(), state["spec"]


def load_run_config(
    run_dir: Path, config_file: str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """A run directory's resolved config, optionally layered with a YAML file and ``--set``s."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not an adarec run directory (no config.yaml)")
    advice = "restore it: adarec writes the run's resolved configuration there"
    try:
        saved = yaml.safe_load(read_text(path, "run configuration"))
    except yaml.YAMLError:
        raise UserError(f"{path} is damaged (not valid YAML); {advice}") from None
    if not isinstance(saved, dict):
        raise UserError(f"{path} is damaged (not a mapping); {advice}")
    try:
        saved_cfg = load_config(base=saved)
    except UserError as exc:
        raise UserError(f"{path} is damaged ({exc}); {advice}") from None
    return load_config(config_file, overrides, base=to_dict(saved_cfg))


METRICS_KEYS = ("dataset", "model", "valid", "test", "params", "train_seconds", "epochs")


def read_metrics(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise UserError(f"{run_dir} has no metrics.json; is the run finished?")
    hint = "re-run the stage (remove metrics.json, then the same command with --resume)"
    metrics = read_json(path, dict, hint)
    missing = [key for key in METRICS_KEYS if key not in metrics]
    if missing:
        raise UserError(f"{path} is damaged (no {missing[0]!r}); {hint}")
    return metrics


def read_test_ranks(run_dir: Path) -> list[int] | None:
    """The run's per-user test ranks (None for runs finished before they were kept)."""
    path = Path(run_dir) / TEST_RANKS_FILE
    if not path.exists():
        return None
    hint = "re-evaluate the run (adarec evaluate RUN) to write it again"
    ranks = read_json(path, dict, hint).get("full")
    if not isinstance(ranks, list) or not all(isinstance(r, int) and r >= 0 for r in ranks):
        raise UserError(f"{path} is damaged (no list of ranks under 'full'); {hint}")
    return ranks


# Where a run's training loops checkpoint (BERT4Rec pretrains in a folder of its own). Runs
# nested in a run directory (an ablation's own search) are not part of it.
CHECKPOINT_DIRS = ("checkpoints", "pretrain/checkpoints")


def has_weights(run_dir: Path) -> bool:
    """Whether a run directory holds trained weights of its own (a model or a checkpoint)."""
    run_dir = Path(run_dir)
    folders = [run_dir] + [run_dir / name for name in CHECKPOINT_DIRS]
    return any(any(folder.glob("*.pt")) for folder in folders)


def check_run_data(run_dir: Path, data: PreparedData) -> None:
    """Refuse ``data`` unless it is exactly what the run was trained on.

    ``data.json`` pins the fingerprint of the processed sequences. A run from before
    fingerprints were kept is checked on its item mapping, and only when its configuration
    regenerates the data (``regenerable``); any other such run is refused.
    """
    run_dir = Path(run_dir)
    hint = "it pins the data this run was trained on; re-run the stage to restore it"
    saved = read_json(run_dir / DATA_FILE, dict, hint) if (run_dir / DATA_FILE).exists() else {}
    if "fingerprint" in saved:
        same = saved["fingerprint"] == data.fingerprint()
    else:
        same = read_json(run_dir / ITEMS_FILE, list, hint) == data.item_ids
        if same and not regenerable(data):
            # The same items say nothing of the rows: an edited file would be scored as
            # if it were the run's own data.
            raise UserError(
                f"{run_dir} has no fingerprint of the data it was trained on ({DATA_FILE} "
                "is missing or has none), so this data cannot be checked against it: rows "
                "edited, added or removed under the same items would give other metrics "
                "unnoticed. Only a synthetic dataset, generated from the run's own "
                "configuration, is checked without it; train a new run on this data"
            )
    if not same:
        raise UserError(
            f"the data differs from what {run_dir} was trained on: dataset "
            f"{data.options.get('dataset', data.name)!r} now gives other sequences, items or "
            "negatives (rows edited, added, removed or re-ordered, or other preprocessing); "
            "use the original data file, or train a new run on this data"
        )


def regenerable(data: PreparedData) -> bool:
    """Whether the run's recorded configuration alone determines ``data`` (the synthetic
    generator, seeded), so that its fingerprint can be rebuilt from the run."""
    return data.options.get("dataset") == "synthetic"


def relative_to_run(path: Path, run_dir: Path) -> str:
    """``path`` as a run directory's files record it: relative to ``run_dir``, so that runs
    moved together (a pipeline's teacher/ beside its search/) still find each other."""
    return os.path.relpath(Path(path).resolve(), Path(run_dir).resolve())


def resolve_from_run(recorded: str, run_dir: Path) -> Path:
    """A path read from ``run_dir``'s files: relative to the run (absolute in older runs)."""
    path = Path(recorded)
    return path if path.is_absolute() else Path(run_dir) / path
