"""Several server processes sharing one Redis: no lost update, and the in-process store refused."""

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from adarec.errors import UserError
from adarec.serve.app import create_app
from adarec.serve.catalogue import ExactCatalogue
from adarec.serve.events import EventService
from adarec.serve.predictor import Predictor
from adarec.serve.state_store import RedisStore, model_tag
from adarec.serve.streaming import streamer_for
from adarec.serve.workers import check_workers
from tests.serve.server import running


@pytest.fixture(scope="module")
def predictor(runs):
    return Predictor.from_run(runs["student-causal"], backend="eager")


def redis_events(predictor, redis_url) -> EventService:
    model = predictor.model
    store = RedisStore(redis_url, model_tag(model))
    return EventService(predictor, streamer_for(model), store, ExactCatalogue(model))


def test_events_of_one_user_at_two_servers_are_never_lost(predictor, redis_url):
    """Two services (as two workers: separate per-user locks) share one Redis; 8 clients
    send 120 events of one user to both at once: every event is counted."""
    items = predictor.item_ids[1:]
    first, second = redis_events(predictor, redis_url), redis_events(predictor, redis_url)
    with running(create_app(predictor, first)) as a, running(create_app(predictor, second)) as b:
        a.post("/users/shared/reset")
        assert a.post(
            "/events", json={"user": "shared", "item": items[0], "history": []}
        ).is_success

        def send(n: int) -> int:
            http = a if n % 2 else b
            return http.post(
                "/events", json={"user": "shared", "item": items[n % 7], "k": 3}
            ).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(send, range(120))) == {200}
        assert a.get("/users/shared").json()["events"] == 121
        assert b.get("/users/shared").json()["events"] == 121
    assert first.store.conflicts + second.store.conflicts > 0  # the race did happen


@pytest.mark.parametrize("state", [None, "memory"])
def test_several_workers_need_redis(state):
    with pytest.raises(UserError, match="--workers 2 needs --state redis://"):
        check_workers(2, state)
    check_workers(1, state)
    check_workers(4, "redis://127.0.0.1:6379/0")
    with pytest.raises(UserError, match="--workers must be 1 or more"):
        check_workers(0, "redis://127.0.0.1:6379/0")


def test_serve_with_two_workers(runs, redis_url, tmp_path):
    """``adarec serve --workers 2``: both workers answer on one port, counts stay exact."""
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "adarec", "serve", str(runs["student-causal"])]
    argv += ["--port", "0", "--workers", "2", "--state", redis_url, "--no-access-log"]
    with open(log, "w") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, url = time.monotonic() + 120, ""
        while not url or log.read_text().count("worker ") < 2:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            for line in log.read_text().splitlines():
                if line.startswith("serving ") and " on http://" in line:
                    url = line.split(" on ")[1].split(";")[0]
            time.sleep(0.1)
        items = Predictor.from_run(runs["student-causal"]).item_ids[1:]

        def send(n: int) -> int:
            # A new connection per request: the kernel spreads them over the workers.
            body = {"user": "w", "item": items[n % 5], "k": 2}
            return httpx.post(f"{url}/events", json=body, timeout=30).status_code

        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
        httpx.post(f"{url}/users/w/reset", timeout=30)
        first = {"user": "w", "item": items[0], "history": []}
        assert httpx.post(f"{url}/events", json=first, timeout=30).status_code == 200
        with ThreadPoolExecutor(6) as pool:
            assert set(pool.map(send, range(60))) == {200}
        assert httpx.get(f"{url}/users/w", timeout=30).json()["events"] == 61
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0, log.read_text()
    assert "server stopped" in log.read_text()


def test_a_local_copy_of_redis_states_made_stale_elsewhere_is_never_used(predictor, redis_url):
    """A server keeps the states it wrote (one round trip per event); when another server
    writes the user in between, the copy fails its check-and-set and the event is applied
    again from Redis: every event counted, the answer that of the whole history."""
    model = predictor.model

    def events(cache_users: int) -> EventService:
        store = RedisStore(redis_url, model_tag(model), cache_users=cache_users, cache_bytes=10**8)
        return EventService(predictor, streamer_for(model), store, ExactCatalogue(model))

    items = predictor.item_ids[1:6]
    cached, other = events(1000), events(0)
    with running(create_app(predictor, cached)) as a, running(create_app(predictor, other)) as b:
        a.post("/users/copy/reset")
        a.post("/events", json={"user": "copy", "item": items[0], "history": []})
        a.post("/events", json={"user": "copy", "item": items[1]})
        assert cached.store.cache_hits == 1 and cached.store.conflicts == 0
        b.post("/events", json={"user": "copy", "item": items[2]})  # a's copy is now stale
        answer = a.post("/events", json={"user": "copy", "item": items[3], "k": 5}).json()
        assert cached.store.conflicts == 1  # the stale copy was refused, then Redis read
        assert answer["events"] == 4
        assert answer["items"] == predictor.recommend(items[:4], k=5)["items"]
        assert a.get("/health").json()["store"]["cached_users"] == 1
        a.post("/users/copy/reset")
        assert cached.store.cache == {}
        assert a.post("/events", json={"user": "copy", "item": items[4]}).status_code == 409
