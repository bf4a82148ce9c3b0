"""Self-contained serving artefacts of a run: a TorchScript or ONNX model plus what serving needs.

An artefact directory holds the model file (``model.ts`` or ``model.onnx``, computing
``full_sort_predict``: int64 ``items`` [batch, max_len] left-padded with 0 -> float
``scores`` [batch, num_items + 1], column 0 = padding), ``items.json`` (raw item ids),
``popularity.json`` (training item counts, the fallback for empty histories) and
``metadata.json``. Serving it needs neither the dataset nor adarec's model classes.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adarec.errors import UserError
from adarec.io import (
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    refuse_broken_link,
    writable_dir,
)
from adarec.models.base import count_parameters
from adarec.runs import (
    ITEMS_FILE,
    MODEL_FILE,
    POPULARITY_FILE,
    load_run_config,
    load_run_model,
    read_metrics,
    serving_file_hint,
)
from adarec.runtime.distributed import resolve_device

FORMATS = ("torchscript", "onnx")
MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
# An artefact keeps the run's items.json and popularity.json under the same names.
METADATA_FILE = "metadata.json"
INPUT_NAME, OUTPUT_NAME = "items", "scores"


class ScorePredict(nn.Module):
    """``full_sort_predict`` as ``forward``: the shape that tracing and ONNX export expect."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.model.full_sort_predict(items)


def is_artefact(path: Path) -> bool:
    return (Path(path) / METADATA_FILE).is_file()


def trace_device(fmt: str, device: str | torch.device = "cpu") -> torch.device:
    """Where the export traces the model: ONNX anywhere (CPU), TorchScript where it will run.

    A traced TorchScript graph keeps the device of tensors created inside the model (e.g.
    position indices) as constants, so it only runs on the device it was traced on.
    """
    return resolve_device(str(device)) if fmt == "torchscript" else torch.device("cpu")


def default_export_dir(run_dir: Path, fmt: str, device: str | torch.device = "cpu") -> Path:
    traced_on = trace_device(fmt, device)
    suffix = "" if traced_on.type == "cpu" else f"-{traced_on}".replace(":", "")
    return Path(run_dir) / "export" / f"{fmt}{suffix}"


def run_items(run_dir: Path, num_items: int) -> list[str]:
    """The raw item ids of a run's model with ``num_items`` items (index 0: padding)."""
    path = Path(run_dir) / ITEMS_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} has no {ITEMS_FILE} (the item id mapping)")
    hint = "re-run the stage that wrote it (it maps the model's ids)"
    items = read_json(path, list, hint)
    if len(items) != num_items + 1:
        raise UserError(f"{path} does not match the model's {num_items} items; {hint}")
    return items


METADATA_KEYS = ("format", "max_len", "num_items")


def read_metadata(artefact_dir: Path) -> dict[str, Any]:
    """An artefact's metadata.json, checked to hold what serving reads."""
    path = Path(artefact_dir) / METADATA_FILE
    hint = "export the run again (adarec export RUN_DIR)"
    metadata = read_json(path, dict, hint)
    missing = [key for key in METADATA_KEYS if key not in metadata]
    sizes = [metadata.get(key) for key in ("max_len", "num_items")]
    if (
        missing
        or metadata["format"] not in FORMATS
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes)
    ):
        raise UserError(f"{path} is damaged (format, max_len or num_items wrong); {hint}")
    return metadata


def read_popularity(path: Path, num_items: int, hint: str) -> list[float]:
    """Training counts [num_items + 1] (index 0: padding), the fallback for empty histories,
    from a run's or an artefact's popularity.json; UserError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path} is missing (the training popularity that serving falls back on); {hint}"
        )
    counts = read_json(path, list, hint)
    if len(counts) != num_items + 1 or not all(
        isinstance(c, int | float) and not isinstance(c, bool) for c in counts
    ):
        raise UserError(f"{path} is damaged (not one count per item of {ITEMS_FILE}); {hint}")
    return counts


def run_popularity(run_dir: Path, num_items: int) -> list[float]:
    """The training popularity a run's stage wrote beside its items.json."""
    path = Path(run_dir) / POPULARITY_FILE
    return read_popularity(path, num_items, serving_file_hint(POPULARITY_FILE))


def _metrics_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keep = ("valid", "test", "train_seconds", "epochs", "cost")
    return {key: metrics[key] for key in keep if key in metrics}


def model_info(run_dir: Path, model: nn.Module, spec: dict[str, Any]) -> dict[str, Any]:
    """What a served model is: kind, name, dataset, sizes, architecture, parameters, metrics."""
    metrics_path = Path(run_dir) / "metrics.json"
    saved = read_metrics(run_dir) if metrics_path.is_file() else {}
    if spec["kind"] == "teacher":
        name, architecture = spec["model"]["name"], spec["model"]
    else:
        name = saved.get("model", spec["kind"])
        architecture = saved.get("architecture", spec.get("genotype"))
    dataset = saved.get("dataset") or load_run_config(run_dir).data.dataset
    return {
        "kind": spec["kind"],
        "model": name,
        "dataset": dataset,
        "max_len": spec["max_len"],
        "num_items": spec["num_items"],
        "architecture": architecture,
        "params": count_parameters(model),
        "metrics": _metrics_summary(saved),
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def example_histories(num_items: int, max_len: int) -> torch.Tensor:
    """Two histories [2, max_len]: one full, one left-padded (the export traces both cases)."""
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, num_items + 1, (2, max_len), generator=generator)
    items[1, : max_len // 2] = 0
    return items


def frozen_torchscript(predict: ScorePredict, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``predict`` traced on ``example`` and frozen: the graph a TorchScript export holds."""
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about Python values it freezes (shapes, the max_len). Its own check
        # (a second trace, seconds for a big cell) is skipped: the parity tests compare the
        # exported graph with eager PyTorch on other batch sizes and paddings instead.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(predict, example, check_trace=False)
        # Freezing folds the weights into the graph as constants and drops the module
        # attribute lookups: at batch 1, where every op's dispatch is the cost, the ml-1m
        # student scores in 0.25 ms frozen against 0.33 ms traced (1 thread).
        return torch.jit.freeze(traced)


def _write_model(predict: ScorePredict, example: torch.Tensor, fmt: str, path: Path) -> None:
    """The model file, serialised in memory and then written: torch.jit.save to a file
    aborts the process when the disk fills (a C++ exception in a destructor); a failed
    write here is a UserError naming the file."""
    buffer = io.BytesIO()
    if fmt == "torchscript":
        torch.jit.save(frozen_torchscript(predict, example), buffer)
        atomic_write_bytes(path, buffer.getbuffer())
        return
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings, as above
        torch.onnx.export(
            predict,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            dynamo=False,
        )
    atomic_write_bytes(path, buffer.getbuffer())


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def clean_stale_temporaries(out_dir: Path) -> None:
    """Tidy what a killed export of ``out_dir`` left beside it.

    Its hidden temporary folder (``.NAME.PID.*.tmp``) is removed once process PID is gone;
    an earlier artefact set aside as ``.NAME.old`` is put back when ``out_dir`` itself went
    missing (killed mid-swap), else removed.
    """
    out_dir = Path(out_dir)
    prefix = f".{out_dir.name}."
    for path in out_dir.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = path.name[len(prefix) :].split(".", 1)[0]
        if path.is_dir() and not (pid.isdigit() and _process_running(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.is_dir():
        if not out_dir.exists() and is_artefact(old):
            old.rename(out_dir)
        else:
            shutil.rmtree(old, ignore_errors=True)


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` to ``out_dir``; an earlier artefact there is replaced."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"{out_dir} is a file, not an export folder; choose another --out")
        if not is_artefact(out_dir) and any(out_dir.iterdir()):
            raise UserError(f"{out_dir} exists and is not an adarec export; choose another --out")
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def export_run(
    run_dir: Path, fmt: str, out_dir: Path | None = None, device: str | torch.device = "cpu"
) -> Path:
    """Write the serving artefact of ``run_dir`` in ``fmt``; returns its directory.

    ``device`` matters for TorchScript only: its artefact runs on that device alone.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if is_artefact(run_dir):
        raise UserError(f"{run_dir} is already an exported artefact; export a run directory")
    out_dir = Path(out_dir) if out_dir is not None else default_export_dir(run_dir, fmt, device)
    refuse_broken_link(out_dir, "export folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file, not an export folder; choose another --out")
    writable_dir(out_dir.parent, "export folder")
    clean_stale_temporaries(out_dir)
    traced_on = trace_device(fmt, device)
    model, spec = load_run_model(run_dir, traced_on)
    items = run_items(run_dir, spec["num_items"])
    popularity = run_popularity(run_dir, spec["num_items"])
    metadata = {
        **model_info(run_dir, model, spec),
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "input": {
            "name": INPUT_NAME,
            "dtype": "int64",
            "shape": ["batch", spec["max_len"]],
            "padding": "left, id 0",
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", spec["num_items"] + 1],
            "column_0": "padding",
        },
        "traced_on": str(traced_on) if fmt == "torchscript" else "any",
        "torch_version": torch.__version__,
        "source": {
            "run_dir": str(run_dir.resolve()),
            "model_sha256": file_sha256(run_dir / MODEL_FILE),
        },
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    # The process id in the name tells a later export whether this folder is still in use.
    prefix = f".{out_dir.name}.{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=out_dir.parent))
    try:
        example = example_histories(spec["num_items"], spec["max_len"]).to(traced_on)
        _write_model(ScorePredict(model).eval(), example, fmt, tmp / MODEL_FILES[fmt])
        atomic_write_json(tmp / ITEMS_FILE, items)
        atomic_write_json(tmp / POPULARITY_FILE, popularity)
        atomic_write_json(tmp / METADATA_FILE, metadata)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def current_export(run_dir: Path, fmt: str, device: str | torch.device = "cpu") -> Path:
    """The run's default artefact in ``fmt``, exported again when missing or out of date."""
    out_dir = default_export_dir(run_dir, fmt, device)
    if is_artefact(out_dir):
        try:
            source = read_metadata(out_dir).get("source", {})
        except UserError:
            source = {}  # a damaged artefact is exported again, like an outdated one
        model_path = Path(run_dir) / MODEL_FILE
        if model_path.is_file() and source.get("model_sha256") == file_sha256(model_path):
            return out_dir
    return export_run(run_dir, fmt, out_dir, device)
