"""Exported artefacts: parity with eager PyTorch, contents, and atomic, safe writes."""

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from adarec.cli import main
from adarec.data import preprocess
from adarec.data.preprocess import prepare
from adarec.data.splits import eval_split, item_counts
from adarec.errors import UserError
from adarec.io import read_json
from adarec.nas.genotype import genotype_from_dict
from adarec.nas.operations import OP_SETS
from adarec.nas.student import Student
from adarec.runs import load_run_config as run_config
from adarec.runs import load_run_model, save_model
from adarec.serve import export as export_module
from adarec.serve.export import clean_stale_temporaries, current_export, export_run, is_artefact
from adarec.serve.predictor import Predictor, load_torchscript
from tests.serve.conftest import STUDENTS, TEACHERS

FORMATS = ("torchscript", "onnx")


def exported_scores(out_dir, fmt: str, items: torch.Tensor) -> np.ndarray:
    """Scores of the artefact alone, loaded the way a third party would."""
    if fmt == "torchscript":
        with torch.no_grad():
            return load_torchscript(out_dir / "model.ts", torch.device("cpu"))(items).numpy()
    session = ort.InferenceSession(str(out_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["scores"], {"items": items.numpy()})[0]


def parity_inputs(run_dir, num_items: int, max_len: int) -> list[torch.Tensor]:
    """Random histories (other batch sizes, some left-padded) and the run's real test inputs."""
    generator = torch.Generator().manual_seed(1)
    random = torch.randint(1, num_items + 1, (7, max_len), generator=generator)
    for row, pad in enumerate([0, 1, 3, 5, max_len - 1, 2, 0]):
        random[row, :pad] = 0
    cfg = run_config(run_dir)
    real = torch.as_tensor(eval_split(prepare(cfg.data, cfg.seed), "test", max_len).inputs)
    return [random, real, real[:1]]


def check_parity(run_dir, fmt: str, out_dir) -> None:
    model, spec = load_run_model(run_dir)
    for items in parity_inputs(run_dir, spec["num_items"], spec["max_len"]):
        with torch.no_grad():
            expected = model.full_sort_predict(items).numpy()
        np.testing.assert_allclose(
            exported_scores(out_dir, fmt, items), expected, rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", TEACHERS + STUDENTS)
def test_export_matches_eager(runs, name, fmt, tmp_path):
    out = export_run(runs[name], fmt, tmp_path / "artefact")
    check_parity(runs[name], fmt, out)


def _all_ops_student(run_dir, op_set: str, target) -> None:
    """A copy of a student run whose cell uses every op of ``op_set`` (10 edges, 4 nodes)."""
    import shutil

    shutil.copytree(run_dir, target)
    ops = iter(OP_SETS[op_set] * 2)
    inputs = ["cell_input", "node_0", "node_1", "node_2"]
    nodes = [[{"input": inputs[i], "op": next(ops)} for i in range(j + 1)] for j in range(4)]
    genotype = genotype_from_dict({"op_set": op_set, "cells": 1, "width": 16, "nodes": nodes})
    _, spec = load_run_model(run_dir)
    torch.manual_seed(0)
    student = Student(spec["num_items"], spec["max_len"], genotype).eval()
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    save_model(target, student)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("op_set", ("causal", "paper"))
def test_export_matches_eager_for_every_op(runs, op_set, fmt, tmp_path):
    run = tmp_path / "student"
    _all_ops_student(runs[f"student-{op_set}"], op_set, run)
    check_parity(run, fmt, export_run(run, fmt, tmp_path / "artefact"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_of_a_student_without_positions_matches_eager(runs, fmt, tmp_path):
    run = tmp_path / "student"
    _all_ops_student(runs["student-causal"], "causal", run)
    model, spec = load_run_model(run)
    student = Student.from_spec({**spec, "positions": "none"})
    student.load_state_dict(model.state_dict(), strict=False)  # all but the positions
    save_model(run, student)
    assert not load_run_model(run)[0].uses_positions
    check_parity(run, fmt, export_run(run, fmt, tmp_path / "artefact"))


def test_artefact_is_self_contained(runs, tmp_path):
    run = runs["student-causal"]
    out = export_run(run, "onnx", tmp_path / "artefact")
    assert sorted(p.name for p in out.iterdir()) == [
        "items.json",
        "metadata.json",
        "model.onnx",
        "popularity.json",
    ]
    metadata = read_json(out / "metadata.json")
    _, spec = load_run_model(run)
    metrics = read_json(run / "metrics.json")
    assert metadata["kind"] == "student" and metadata["format"] == "onnx"
    assert metadata["dataset"] == "synthetic"
    assert (metadata["max_len"], metadata["num_items"]) == (spec["max_len"], spec["num_items"])
    assert metadata["architecture"] == metrics["architecture"]
    assert metadata["metrics"]["test"] == metrics["test"]
    assert metadata["params"] == metrics["params"]
    assert metadata["torch_version"] == torch.__version__
    assert read_json(out / "items.json") == read_json(run / "items.json")
    cfg = run_config(run)
    assert read_json(out / "popularity.json") == item_counts(prepare(cfg.data, cfg.seed)).tolist()


def test_artefact_serves_without_the_dataset(runs, tmp_path, monkeypatch):
    out = export_run(runs["nextitnet"], "torchscript", tmp_path / "artefact")
    expected = Predictor.from_run(runs["nextitnet"]).recommend([], k=4)
    monkeypatch.setattr(preprocess, "prepare", _no_data)
    predictor = Predictor.from_run(out)
    assert predictor.info["backend"] == "torchscript"
    assert predictor.recommend([], k=4) == expected
    with pytest.raises(UserError, match="torchscript export"):
        Predictor.from_run(out, backend="onnx")
    assert predictor.info["traced_on"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="traced on cpu"):
        Predictor.from_run(out, device="cuda:0")  # the graph holds CPU device constants


def _no_data(*args, **kwargs):
    raise AssertionError("the dataset was read")


def test_reexport_replaces_and_failed_export_leaves_nothing(runs, tmp_path, monkeypatch):
    out = tmp_path / "artefact"
    export_run(runs["sasrec"], "onnx", out)
    export_run(runs["sasrec"], "torchscript", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefact"]
    assert (out / "model.ts").exists() and not (out / "model.onnx").exists()

    def broken(*args):
        raise RuntimeError("export failed")

    monkeypatch.setattr(export_module, "_write_model", broken)
    with pytest.raises(RuntimeError):
        export_run(runs["sasrec"], "onnx", tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artefact"]


def test_export_refuses_to_overwrite_other_files(runs, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an adarec export"):
        export_run(runs["sasrec"], "onnx", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="unknown export format"):
        export_run(runs["sasrec"], "tflite", tmp_path / "x")


def test_run_backend_reuses_its_export_until_the_model_changes(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["sasrec"], run)
    first = current_export(run, "onnx")
    stamp = (first / "metadata.json").stat().st_mtime_ns
    assert current_export(run, "onnx") == first
    assert (first / "metadata.json").stat().st_mtime_ns == stamp
    model, spec = load_run_model(run)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1)
    save_model(run, model)
    Predictor.from_run(run, backend="onnx")
    check_parity(run, "onnx", first)  # exported again: a stale artefact would not match


def test_export_cleans_what_a_killed_export_left(runs, tmp_path):
    out = tmp_path / "artefact"
    # A killed export (process gone) left its hidden temporary folder and, killed mid-swap,
    # the previous artefact set aside; a live export's folder must be left alone.
    dead = tmp_path / ".artefact.999999999.x1y2.tmp"
    live = tmp_path / f".artefact.{os.getppid()}.a1b2.tmp"
    older = tmp_path / ".artefact.abc123.tmp"  # named before process ids were added
    for folder in (dead, live, older):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"partial")
    export_run(runs["sasrec"], "onnx", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["artefact", live.name])


def test_an_artefact_set_aside_by_a_killed_swap_is_put_back(runs, tmp_path):
    out = tmp_path / "artefact"
    export_run(runs["sasrec"], "onnx", out)
    out.rename(tmp_path / ".artefact.old")  # killed between the two renames of the swap
    clean_stale_temporaries(out)
    assert is_artefact(out) and not (tmp_path / ".artefact.old").exists()


def test_export_out_that_is_a_file_or_unwritable(runs, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for out in (taken, taken / "export"):
        argv = ["export", str(runs["sasrec"]), "--format", "onnx", "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("adarec: error:") and str(taken) in err and "Traceback" not in err
    assert taken.read_text() == "mine"


@pytest.mark.parametrize(
    ("file", "content"),
    [
        ("model.onnx", b""),
        ("model.onnx", b"\x08\x07 truncated protobuf"),
        ("metadata.json", b'{"format": "onnx"'),
        ("metadata.json", b'{"format": "onnx"}'),
        ("items.json", b"[1, 2]"),
        ("popularity.json", None),  # missing
        ("popularity.json", b'{"a": 1}'),
    ],
)
def test_damaged_onnx_artefact_names_the_file(runs, tmp_path, file, content):
    out = export_run(runs["sasrec"], "onnx", tmp_path / "artefact")
    if content is None:
        (out / file).unlink()
    else:
        (out / file).write_bytes(content)
    with pytest.raises(UserError, match=rf"{file.replace('.', '[.]')} .*export the run again"):
        Predictor.from_run(out)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut", bytes(range(256))])
def test_damaged_torchscript_artefact_names_the_file(runs, tmp_path, content):
    out = export_run(runs["sasrec"], "torchscript", tmp_path / "artefact")
    (out / "model.ts").write_bytes(content)
    with pytest.raises(UserError, match=r"model[.]ts is missing or damaged"):
        Predictor.from_run(out)


def test_damaged_default_export_is_exported_again(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["sasrec"], run)
    first = current_export(run, "onnx")
    (first / "metadata.json").write_text("{")
    assert Predictor.from_run(run, backend="onnx").recommend([], k=2)["items"]
    assert read_json(first / "metadata.json")["format"] == "onnx"


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_export_that_does_not_fit_on_disk_is_one_error(runs, tmp_path, fmt):
    """Issue 29 (8): a full disk aborted a TorchScript export (exit 134) and gave an ONNX
    export a traceback; the child process here cannot write files past 2,000 bytes."""
    from tests.test_io import run_with_file_size_limit

    out = tmp_path / "artefact"
    setup = "from adarec.serve.export import export_run"
    call = f"export_run({str(runs['student-causal'])!r}, {fmt!r}, {str(out)!r})"
    output = run_with_file_size_limit(setup, call, limit=2000)
    model_file = "model.ts" if fmt == "torchscript" else "model.onnx"
    assert output.startswith("UserError: cannot write ") and model_file in output, output
    assert "File too large; free some space and run again" in output
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_export_out_that_is_a_symlink_loop_is_one_message(runs, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "back")
    (tmp_path / "back").symlink_to(loop)
    for out in (loop, loop / "export"):
        argv = ["export", str(runs["sasrec"]), "--format", "onnx", "--out", str(out)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("adarec: error:") and "Traceback" not in err
        assert f"{loop} is a symbolic link that leads nowhere" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "loop"]
