"""Per-event serving over real HTTP: exact answers, lost states, stores and concurrency."""

import asyncio
import dataclasses
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from adarec.serve.app import create_app
from adarec.serve.catalogue import ExactCatalogue
from adarec.serve.events import EventService
from adarec.serve.predictor import Predictor
from adarec.serve.state_store import MemoryStore, RedisStore, encode_state, model_tag
from adarec.serve.streaming import StreamState, streamer_for
from tests.serve.server import running


@pytest.fixture(scope="module", params=["student-causal", "sasrec"])
def predictor(runs, request):
    return Predictor.from_run(runs[request.param])


def service(predictor, store=None) -> EventService:
    model = predictor.model
    store = store or MemoryStore(max_users=1000, max_bytes=10**8)
    return EventService(predictor, streamer_for(model), store, ExactCatalogue(model))


def redis_service(predictor, redis_url) -> EventService:
    return service(predictor, RedisStore(redis_url, model_tag(predictor.model)))


def test_events_answer_like_the_whole_history(predictor):
    items = predictor.item_ids[1:]
    # Longer than max_len (10): the window slides and the answers stay exact.
    history = [random.Random(0).choice(items) for _ in range(25)]
    with running(create_app(predictor, service(predictor))) as http:
        body = http.post("/events", json={"user": "u1", "item": history[0], "history": []}).json()
        assert body["state"] == "rebuilt" and body["events"] == 1
        for t in range(1, len(history)):
            response = http.post("/events", json={"user": "u1", "item": history[t], "k": 5})
            assert response.status_code == 200
            body = response.json()
            expected = predictor.recommend(history[: t + 1], k=5)
            assert body["items"] == expected["items"]
            assert body["scores"] == pytest.approx(expected["scores"], abs=1e-4)
            assert body["events"] == t + 1 and body["state"] == "continued"
        assert http.get("/users/u1").json() == {"user": "u1", "stored": True, "events": 25}


def test_a_user_without_state_is_rebuilt_from_history_never_guessed(predictor):
    items = predictor.item_ids[1:8]
    with running(create_app(predictor, service(predictor))) as http:
        refused = http.post("/events", json={"user": "new", "item": items[0]})
        assert refused.status_code == 409
        assert "send the event again with 'history'" in refused.json()["detail"]
        http.post("/events", json={"user": "u", "item": items[0], "history": []})
        assert http.post("/users/u/reset").json() == {"user": "u", "reset": True, "existed": True}
        assert http.post("/events", json={"user": "u", "item": items[1]}).status_code == 409
        rebuilt = http.post("/events", json={"user": "u", "item": items[1], "history": items[:1]})
        assert rebuilt.json()["state"] == "rebuilt" and rebuilt.json()["events"] == 2
        assert rebuilt.json()["items"] == predictor.recommend(items[:2])["items"]
        # A history that disagrees with the stored state wins (the client knows best).
        fixed = http.post("/events", json={"user": "u", "item": items[2], "history": items[3:6]})
        assert fixed.json()["state"] == "rebuilt" and fixed.json()["events"] == 4
        assert fixed.json()["items"] == predictor.recommend(items[3:6] + [items[2]])["items"]
        # The same history as the state: the state is used as it is.
        same = http.post(
            "/events", json={"user": "u", "item": items[4], "history": items[3:6] + [items[2]]}
        )
        assert same.json()["state"] == "continued" and same.json()["events"] == 5


def test_an_evicted_user_is_refused_then_rebuilt(predictor):
    items = predictor.item_ids[1:5]
    events = service(predictor, MemoryStore(max_users=1, max_bytes=10**8))
    with running(create_app(predictor, events)) as http:
        http.post("/events", json={"user": "a", "item": items[0], "history": []})
        http.post("/events", json={"user": "b", "item": items[1], "history": []})
        assert http.post("/events", json={"user": "a", "item": items[2]}).status_code == 409
        store = http.get("/health").json()["store"]
        assert store["kind"] == "memory" and store["evictions"] == 1 and store["users"] == 1


def test_unknown_items_are_not_appended(predictor):
    items = predictor.item_ids[1:4]
    with running(create_app(predictor, service(predictor))) as http:
        first = http.post("/events", json={"user": "u", "item": "nope", "history": []}).json()
        assert first["unknown_item"] and first["fallback"] == "popularity" and first["events"] == 0
        http.post("/events", json={"user": "u", "item": items[0]})
        after = http.post("/events", json={"user": "u", "item": "nope", "k": 3}).json()
        assert after["unknown_item"] and after["events"] == 1
        assert after["items"] == predictor.recommend(items[:1], k=3)["items"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"item": "1"}, "user"),
        ({"user": "", "item": "1"}, "user"),
        ({"user": "u"}, "item"),
        ({"user": "u", "item": 1.5}, "item"),
        ({"user": "u", "item": "1", "k": 0}, "k"),
        ({"user": "u", "item": "1", "history": "1,2"}, "history"),
        ({"user": "u", "item": "1", "exclude_seen": True}, "exclude_seen"),
    ],
)
def test_invalid_events_name_the_field(predictor, body, field):
    with running(create_app(predictor, service(predictor))) as http:
        response = http.post("/events", json={"history": [], **body} if "user" in body else body)
        assert response.status_code == 422 and field in response.json()["detail"]


def test_an_unreachable_redis_is_a_503_and_a_degraded_health(predictor):
    events = service(predictor, RedisStore("redis://127.0.0.1:1/0", model_tag(predictor.model)))
    with running(create_app(predictor, events)) as http:
        response = http.post("/events", json={"user": "u", "item": "1", "history": []})
        assert response.status_code == 503
        assert response.json()["detail"].startswith("the Redis state store redis://127.0.0.1:1/0")
        assert http.get("/health").json()["status"] == "degraded"


def test_without_a_store_events_are_off(predictor):
    with running(create_app(predictor)) as http:
        response = http.post("/events", json={"user": "u", "item": "1", "history": []})
        assert response.status_code == 404 and "--state" in response.json()["detail"]


def test_redis_store_serves_and_refuses_foreign_states(predictor, redis_url):
    items = predictor.item_ids[1:6]
    events = redis_service(predictor, redis_url)
    with running(create_app(predictor, events)) as http:
        http.post("/users/r1/reset")
        for t, item in enumerate(items):
            body = {"user": "r1", "item": item, **({"history": []} if t == 0 else {})}
            answer = http.post("/events", json=body).json()
        assert answer["events"] == 5
        assert answer["items"] == predictor.recommend(items)["items"]
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["store"]["kind"] == "redis"

        # A state another model wrote under this user is refused, not used.
        async def plant():
            other = RedisStore(redis_url, b"othermdl")
            await other.client.set(other.PREFIX + "r1", encode_state(StreamState(3), b"othermdl"))
            await other.close()

        asyncio.run(plant())
        refused = http.post("/events", json={"user": "r1", "item": items[0]})
        assert refused.status_code == 409 and "another model" in refused.json()["detail"]
        rebuilt = http.post("/events", json={"user": "r1", "item": items[0], "history": items})
        assert rebuilt.json()["state"] == "rebuilt" and rebuilt.json()["events"] == 6


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_concurrent_events_of_the_same_user_are_never_lost(predictor, backend, request):
    """16 clients send 240 events for 4 users at once: every event is counted, in order."""
    events = (
        redis_service(predictor, request.getfixturevalue("redis_url"))
        if backend == "redis"
        else service(predictor)
    )
    users = [f"c-{backend}-{u}" for u in range(4)]
    items = predictor.item_ids[1:]
    with running(create_app(predictor, events)) as http:
        for user in users:
            http.post("/users/" + user + "/reset")

        def send(n):
            user = users[n % len(users)]
            body = {"user": user, "item": items[n % len(items)], "k": 3}
            response = http.post("/events", json=body)
            if response.status_code == 409:  # first event of the user: no state yet
                response = http.post("/events", json={**body, "history": []})
            return response.status_code

        # One first event per user, so that later ones never rebuild an empty state.
        for n in range(len(users)):
            assert send(n) == 200
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(send, range(len(users), 240))) == {200}
        counts = [http.get("/users/" + user).json()["events"] for user in users]
    assert counts == [60] * 4
    assert events.locks.locks == {}  # no lock outlives its events


def test_a_user_never_seen_has_no_state(predictor):
    with running(create_app(predictor, service(predictor))) as http:
        assert http.get("/users/nobody").json() == {"user": "nobody", "stored": False, "events": 0}
        reset = http.post("/users/nobody/reset").json()
        assert reset == {"user": "nobody", "reset": True, "existed": False}


@pytest.mark.parametrize("name", ["nextitnet", "student-causal", "sasrec"])
def test_a_history_of_the_same_length_that_disagrees_rebuilds_the_state(runs, name):
    """Issue 29 (2): contents are compared, not lengths, for every model (NextItNet and a
    student without positions keep no items; SASRec keeps only the last max_len = 10)."""
    predictor = Predictor.from_run(runs[name])
    items = predictor.item_ids[1:]
    first = items[:13]
    with running(create_app(predictor, service(predictor))) as http:
        body = {"user": "u", "item": items[20], "history": first}
        assert http.post("/events", json=body).json()["state"] == "rebuilt"
        # The same length (14) with the oldest item changed: outside every kept tail.
        other = [items[30]] + first[1:] + [items[20]]
        answer = http.post("/events", json={"user": "u", "item": items[21], "history": other})
        assert answer.json()["state"] == "rebuilt" and answer.json()["events"] == 15
        # The same length (15) with the newest item changed: inside the served window, so a
        # state used as it is would answer for the wrong history.
        changed = other + [items[22]]
        answer = http.post("/events", json={"user": "u", "item": items[23], "history": changed})
        assert answer.json()["state"] == "rebuilt" and answer.json()["events"] == 16
        assert answer.json()["items"] == predictor.recommend(changed + [items[23]])["items"]
        # The history the state holds: used as it is.
        same = changed + [items[23]]
        answer = http.post("/events", json={"user": "u", "item": items[24], "history": same})
        assert answer.json()["state"] == "continued" and answer.json()["events"] == 17


async def redis_value(redis_url: str, key: str, value: bytes | None = None) -> bytes | None:
    """The raw bytes under ``key`` (and, with ``value``, write those: a restore)."""
    client = RedisStore(redis_url, b"anything")
    try:
        if value is not None:
            await client.client.set(key, value)
        return await client.client.get(key)
    finally:
        await client.close()


def test_a_state_restored_from_an_older_snapshot_is_caught(predictor, redis_url):
    """Issue 29 (3): after Redis is restored from a snapshot taken 6 events ago, a client
    that says how many events it sent (or sends its history) never gets an answer from
    the old state."""
    items = predictor.item_ids[1:14]
    key = RedisStore.PREFIX + "restored"
    with running(create_app(predictor, redis_service(predictor, redis_url))) as http:
        http.post("/users/restored/reset")
        for t, item in enumerate(items):
            body = {"user": "restored", "item": item, "events": t}
            answer = http.post("/events", json={**body, "history": []} if t == 0 else body)
            assert answer.status_code == 200 and answer.json()["events"] == t + 1
            if t == 5:
                snapshot = asyncio.run(redis_value(redis_url, key))
        asyncio.run(redis_value(redis_url, key, snapshot))  # the restore: 6 events

        behind = http.post("/events", json={"user": "restored", "item": items[0], "events": 13})
        assert behind.status_code == 409
        assert "holds 6 events, not the 13" in behind.json()["detail"]
        assert http.get("/users/restored").json()["events"] == 6  # nothing applied
        # Its history rebuilds the state (compared in full, not only by length).
        body = {"user": "restored", "item": items[0], "history": items}
        rebuilt = http.post("/events", json=body).json()
        assert rebuilt["state"] == "rebuilt" and rebuilt["events"] == 14
        assert rebuilt["items"] == predictor.recommend(items + [items[0]])["items"]
        body = {"user": "restored", "item": items[1], "events": 14}
        assert http.post("/events", json=body).json()["state"] == "continued"


@pytest.mark.parametrize("how", ["rows", "cols", "count", "output"])
def test_a_damaged_state_with_this_models_tag_is_refused_not_a_500(predictor, redis_url, how):
    """Issue 29 (13): shapes that do not fit the model's streamer are refused like a
    foreign state: 409 without a history, rebuilt with one."""
    items = predictor.item_ids[1:4]
    events = redis_service(predictor, redis_url)
    state = events.streamer.rebuild([predictor.index[str(item)] for item in items])
    tensors, output = list(state.tensors), state.output
    width = output.numel()
    if how == "rows" and tensors:
        tensors[0] = torch.zeros(tensors[0].size(0) + 1, width)
    elif how == "cols" and tensors:
        tensors[-1] = torch.zeros(tensors[-1].size(0), width - 3)
    elif how == "output":
        output = torch.zeros(width + 2)
    else:
        tensors.append(torch.zeros(2, width))
    damaged = dataclasses.replace(state, tensors=tensors, output=output)
    key = RedisStore.PREFIX + "damaged"
    asyncio.run(redis_value(redis_url, key, encode_state(damaged, model_tag(predictor.model))))
    with running(create_app(predictor, events)) as http:
        refused = http.post("/events", json={"user": "damaged", "item": items[0]})
        assert refused.status_code == 409 and "refused" in refused.json()["detail"]
        body = {"user": "damaged", "item": items[0], "history": items}
        rebuilt = http.post("/events", json=body)
        assert rebuilt.status_code == 200 and rebuilt.json()["state"] == "rebuilt"
        assert rebuilt.json()["items"] == predictor.recommend(items + [items[0]])["items"]


def test_events_must_be_a_count(predictor):
    with running(create_app(predictor, service(predictor))) as http:
        for events in (-1, "3", 1.5, True):
            body = {"user": "u", "item": predictor.item_ids[1], "events": events}
            response = http.post("/events", json=body)
            assert response.status_code == 422 and "events" in response.json()["detail"]
