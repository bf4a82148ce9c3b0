"""Fuzzing what users call: the Python API (adarec.api) with arguments of any type and value
ends in a result or a UserError, and the service's ``/events`` and ``/recommend`` answer any
JSON body with a 2xx or 4xx, never a 500."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from adarec import api
from adarec.errors import UserError
from adarec.serve.app import create_app
from adarec.serve.catalogue import make_catalogue
from adarec.serve.events import EventService
from adarec.serve.predictor import Predictor
from adarec.serve.state_store import MemoryStore
from adarec.serve.streaming import streamer_for
from tests.serve.conftest import tiny_config

FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(autouse=True)
def _elsewhere(tmp_path, monkeypatch):
    # Whatever a call writes by mistake lands here, not in the working directory.
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One tiny trained teacher (SASRec streams per event: it serves /events too)."""
    from adarec.pipeline import teacher

    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAREC_CACHE_DIR", str(root / "cache"))
        mp.setattr(teacher, "plot_training_curves", lambda *a, **k: None, raising=False)
        teacher.train_teacher(tiny_config("model.name=sasrec"), root / "sasrec", quiet=True)
    return root / "sasrec"


# JSON-like values of every type, and Python values JSON has no word for.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
ANYTHING = st.one_of(
    JSONISH,
    st.binary(max_size=8),
    st.tuples(SCALARS, SCALARS),
    st.sets(st.integers(), max_size=3),
    st.sampled_from([object(), math.nan, Path(""), Path("/"), b"/tmp", iter([1]), 1j]),
)


def _call(function, *args, **kwargs):
    """The result, or None for a UserError; any other exception fails the test."""
    try:
        return function(*args, **kwargs)
    except UserError:
        return None


@FUZZ
@given(file=ANYTHING, overrides=ANYTHING, run_arg=ANYTHING)
def test_config_takes_anything(file, overrides, run_arg):
    _call(api.config, file, overrides, run_arg)


@FUZZ
@given(
    which=st.sampled_from(["load_data", "train_teacher", "search", "retrain"]),
    cfg=ANYTHING,
    out=ANYTHING,
    other=ANYTHING,
    flag=ANYTHING,
)
def test_stages_take_anything(tmp_path, which, cfg, out, other, flag):
    # A cfg that is no Config is refused before anything is trained or written.
    function = getattr(api, which)
    if which == "load_data":
        assert _call(function, cfg) is None
    elif which == "train_teacher":
        assert _call(function, cfg, out, resume=flag) is None
    elif which == "search":
        assert _call(function, cfg, out, teacher=other, quiet=flag) is None
    else:
        assert _call(function, cfg, out, search=other, teacher=flag) is None
    # Wrong types around a real configuration: refused, naming the argument, before any
    # work (the calls here never get a usable out and a usable flag at once).
    cfg = tiny_config()
    if which == "train_teacher" and not isinstance(out, str | os.PathLike):
        assert _call(function, cfg, out) is None
    if which == "train_teacher" and not isinstance(flag, bool):
        assert _call(function, cfg, tmp_path / "teacher", resume=flag) is None
    if which == "search" and not isinstance(other, str | os.PathLike | nn.Module):
        assert _call(function, cfg, tmp_path / "search", teacher=other) is None


def either(valid):
    """A valid value or anything, half and half: the arguments after the first wrong one
    are reached too."""
    return st.booleans().flatmap(lambda ok: valid if ok else ANYTHING)


@FUZZ
@given(
    run_dir=either(st.sampled_from(["RUN", "PATH"])),
    fmt=either(st.sampled_from(["onnx", "torchscript", "ONNX", ""])),
    out=either(st.sampled_from(["artefact", "deep/er", "."])),
    device=either(st.sampled_from(["cpu", "cuda:99", "tpu", "auto", "", "meta"])),
    flag=either(st.booleans()),
)
def test_run_functions_take_anything(run, tmp_path, run_dir, fmt, out, device, flag):
    run_dir = (
        {"RUN": str(run), "PATH": run}.get(run_dir, run_dir) if _hashable(run_dir) else run_dir
    )
    _call(api.load_teacher, run_dir, device)
    _call(api.evaluate, run_dir, flag)
    if isinstance(out, str | os.PathLike):
        out = tmp_path / "artefact"  # never beside the real run, nor anywhere else
    _call(api.export, run_dir, fmt, out, device)


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


@pytest.fixture(scope="module")
def predictor(run) -> Predictor:
    return Predictor.from_run(run, backend="eager")


@FUZZ
@given(
    path=either(st.just("RUN")),
    backend=either(st.sampled_from([None, "eager", "compiled", "onnx", "torchscript", "jax"])),
    device=either(st.sampled_from(["cpu", "meta", "cuda:7", "auto"])),
    history=either(st.lists(st.one_of(st.integers(0, 70), st.text(max_size=3)), max_size=12)),
    k=either(st.integers(-2, 70)),
    exclude_seen=either(st.booleans()),
)
def test_predictor_takes_anything(run, predictor, path, backend, device, history, k, exclude_seen):
    if path == "RUN":
        path = run
    _call(api.predictor, path, backend, device)
    if isinstance(history, list):
        # Raw ids of the catalogue are strings: most of these are known items.
        history = [predictor.item_ids[v] if isinstance(v, int) and v < 60 else v for v in history]
    _call(predictor.recommend, history, k, exclude_seen)
    _call(predictor.recommend_batch, [history, history], k, exclude_seen)
    _call(predictor.recommend_batch, history, k, exclude_seen)


@pytest.fixture(scope="module")
def client(predictor):
    streamer = streamer_for(predictor.model)
    store = MemoryStore(max_users=1000, max_bytes=2**24)
    catalogue = make_catalogue(predictor.model, "auto")
    app = create_app(predictor, EventService(predictor, streamer, store, catalogue))
    with TestClient(app, raise_server_exceptions=False) as http:
        yield http


def _values(predictor: Predictor):
    """Item ids the model knows mixed with anything."""
    known = st.sampled_from(predictor.item_ids[1:])
    return st.one_of(known, JSONISH)


def _bodies(predictor: Predictor, keys: list[str]):
    values = _values(predictor)
    fields = st.dictionaries(
        st.one_of(st.sampled_from(keys), st.text(max_size=6)),
        st.one_of(values, st.lists(values, max_size=5)),
        max_size=5,
    )
    return st.one_of(fields, JSONISH)


def _encoded(body) -> bytes:
    try:
        return json.dumps(body, allow_nan=True).encode()
    except (TypeError, ValueError):
        return b"{"


@FUZZ
@given(data=st.data())
def test_service_never_answers_500(client, predictor, data):
    endpoint = data.draw(st.sampled_from(["/events", "/recommend"]))
    keys = (
        ["user", "item", "k", "history", "events"]
        if endpoint == "/events"
        else ["history", "histories", "k", "exclude_seen"]
    )
    body = data.draw(_bodies(predictor, keys))
    raw = data.draw(st.one_of(st.just(_encoded(body)), st.binary(max_size=16)))
    response = client.post(endpoint, content=raw, headers={"content-type": "application/json"})
    assert response.status_code < 500, (endpoint, raw, response.text)
    assert response.status_code in (200, 404, 409, 413, 422), (endpoint, raw, response.text)
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str)
