"""State stores: the bounded in-process LRU and Redis (a real redis-server on loopback)."""

import asyncio
import struct

import pytest
import torch

from adarec.errors import UserError
from adarec.serve.state_store import (
    STATE_OVERHEAD,
    TENSOR_OVERHEAD,
    ForeignState,
    MemoryStore,
    RedisStore,
    decode_state,
    encode_state,
    footprint,
    model_tag,
    open_store,
)
from adarec.serve.streaming import StreamState, history_digest, streamer_for
from tests.models.helpers import tiny_model

TAG = b"12345678"


def run(coroutine):
    return asyncio.run(coroutine)


def sample_state(events: int = 3, width: int = 4) -> StreamState:
    generator = torch.Generator().manual_seed(events)
    return StreamState(
        events=events,
        recent=list(range(1, events + 1)),
        tensors=[torch.randn(2, width, generator=generator), torch.zeros(0, width)],
        output=torch.randn(width, generator=generator),
        digest=history_digest(list(range(1, events + 1))),
    )


def assert_same(a: StreamState, b: StreamState) -> None:
    assert (a.events, a.recent, a.digest) == (b.events, b.recent, b.digest)
    assert len(a.tensors) == len(b.tensors)
    assert all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors, strict=True))
    assert (a.output is None) == (b.output is None)
    assert a.output is None or torch.equal(a.output, b.output)


def test_encoding_round_trips_and_is_compact():
    state = sample_state()
    data = encode_state(state, TAG)
    assert_same(decode_state(data, TAG), state)
    # 29-byte header, 3 int32 items, 3 shapes and 2 x 4 + 4 floats: nothing else.
    assert len(data) == 29 + 3 * 4 + 3 * 4 + 12 * 4
    empty = StreamState()
    assert_same(decode_state(encode_state(empty, TAG), TAG), empty)
    # The digest takes all 64 bits.
    wide = StreamState(digest=2**64 - 1)
    assert decode_state(encode_state(wide, TAG), TAG).digest == 2**64 - 1


def test_a_state_of_the_previous_format_is_refused_not_misread():
    """Format 1 had no digest: read with format 2's layout it would be garbage."""
    state = sample_state()
    old_header = struct.pack("<4sB8sIHH", b"ADRS", 1, TAG, state.events, len(state.recent), 3)
    data = old_header + encode_state(state, TAG)[29:]
    with pytest.raises(ForeignState, match="format 2"):
        decode_state(data, TAG)


def test_a_state_of_another_model_or_format_is_refused():
    data = encode_state(sample_state(), TAG)
    with pytest.raises(ForeignState, match="another model"):
        decode_state(data, b"87654321")
    with pytest.raises(ForeignState, match="format"):
        decode_state(b"XXXX" + data[4:], TAG)
    with pytest.raises(ForeignState, match="truncated|trailing"):
        decode_state(data[:-3], TAG)
    with pytest.raises(ForeignState, match="too short"):
        decode_state(b"AD", TAG)


def test_model_tag_follows_the_weights():
    a, b = tiny_model("sasrec", seed=0), tiny_model("sasrec", seed=1)
    assert model_tag(a) == model_tag(tiny_model("sasrec", seed=0)) != model_tag(b)


def test_memory_store_evicts_least_recently_used_users():
    store = MemoryStore(max_users=2, max_bytes=10**9)
    run(store.put("a", sample_state(1)))
    run(store.put("b", sample_state(2)))
    assert run(store.get("a")).events == 1  # "a" is now the most recently used
    run(store.put("c", sample_state(3)))
    assert run(store.get("b")) is None
    assert [run(store.get(u)).events for u in ("a", "c")] == [1, 3]
    stats = run(store.stats())
    assert stats["users"] == 2 and stats["evictions"] == 1
    assert stats["bytes"] == footprint("a", sample_state(1)) + footprint("c", sample_state(3))


def test_memory_store_evicts_by_bytes():
    one = footprint("a", sample_state(2))  # the users' ids are all as long
    store = MemoryStore(max_users=100, max_bytes=2 * one)
    for user in "abcd":
        run(store.put(user, sample_state(2)))
    stats = run(store.stats())
    assert stats["users"] == 2 and stats["evictions"] == 2 and stats["bytes"] <= 2 * one
    assert run(store.get("a")) is None and run(store.get("d")) is not None
    # Replacing a user's state accounts for the old bytes.
    run(store.put("d", sample_state(2)))
    assert run(store.stats())["bytes"] == 2 * one
    assert run(store.delete("d")) and not run(store.delete("d"))
    assert run(store.stats())["bytes"] == one


def test_memory_store_counts_what_a_state_takes_not_only_its_elements():
    """Issue 29 (15): 20,000 users counted 6.8 MB of tensor elements while RSS grew 35 MiB."""
    state = sample_state(3, width=8)
    state.output = torch.randn(16, 8)[-1]  # a row of a re-encoding: its storage stays whole
    size = footprint("user", state)
    storages = sum(t.untyped_storage().nbytes() for t in [*state.tensors, state.output])
    assert storages == 4 * 8 * (2 + 0 + 16)
    assert size >= storages + TENSOR_OVERHEAD * 3 + STATE_OVERHEAD > 5 * state.nbytes()
    store = MemoryStore(max_users=100, max_bytes=10 * size)
    for n in range(20):
        run(store.put(f"u{n:03d}", sample_state(3, width=8)))
    assert run(store.stats())["users"] < 20 and store.bytes <= 10 * size


def test_memory_store_accounting_survives_a_state_stepped_in_place():
    store = MemoryStore(max_users=10, max_bytes=10**9)
    state = sample_state(2)
    run(store.put("a", state))
    state.tensors.append(torch.zeros(50, 4))  # a step that grows the stored object
    state.recent.extend(range(20))
    run(store.put("b", sample_state(1)))
    assert run(store.delete("a")) and run(store.delete("b"))
    assert run(store.stats())["bytes"] == 0


def test_open_store_refuses_an_unknown_spec():
    with pytest.raises(UserError, match="redis://host:port/db"):
        open_store("postgres://x", TAG, 10, 10)
    with pytest.raises(UserError, match="at least one user"):
        open_store("memory", TAG, 0, 10)


def test_redis_store_round_trips_streamed_states(redis_url):
    model = tiny_model("sasrec")
    streamer = streamer_for(model)
    state = streamer.rebuild([3, 1, 4, 1, 5])

    async def scenario():
        store = RedisStore(redis_url, model_tag(model))
        try:
            await store.delete("u1")
            assert await store.get("u1") is None
            await store.put("u1", state)
            loaded = await store.get("u1")
            stats = await store.stats()
            existed = await store.delete("u1")
            return loaded, stats, existed, await store.get("u1")
        finally:
            await store.close()

    loaded, stats, existed, gone = run(scenario())
    assert_same(loaded, state)
    assert stats["status"] == "ok" and stats["kind"] == "redis" and stats["used_memory"] > 0
    assert existed and gone is None
    # The loaded state keeps streaming exactly like the original.
    _, expected = streamer.step(state, 9)
    _, scores = streamer.step(loaded, 9)
    assert torch.equal(scores, expected)


def test_redis_store_refuses_a_state_of_another_model(redis_url):
    async def scenario():
        writer = RedisStore(redis_url, model_tag(tiny_model("sasrec", seed=0)))
        reader = RedisStore(redis_url, model_tag(tiny_model("sasrec", seed=1)))
        try:
            await writer.put("shared", sample_state())
            with pytest.raises(ForeignState, match="another model"):
                await reader.get("shared")
            return (await reader.stats())["refused_states"]
        finally:
            await writer.close()
            await reader.close()

    assert run(scenario()) == 1


def test_unreachable_redis_is_reported_not_raised():
    async def scenario():
        store = RedisStore("redis://:secret@127.0.0.1:1/0", TAG)
        try:
            return await store.stats()
        finally:
            await store.close()

    stats = run(scenario())
    assert stats["status"].startswith("unreachable") and stats["url"] == "redis://127.0.0.1:1/0"


@pytest.mark.parametrize("first", ["get", "put", "delete", "stats"])
def test_redis_store_serves_the_first_call_after_a_redis_restart(tmp_path, first):
    """Issue 29 (15): the first request after each Redis restart got a spurious 503."""
    from tests.serve.conftest import free_port, start_redis

    port = free_port()
    server = start_redis(port, tmp_path)

    async def session():
        nonlocal server
        store = RedisStore(f"redis://127.0.0.1:{port}/0", TAG, "cpu", 10, 10**6)
        try:
            await store.put("u", sample_state(2))
            assert (await store.stats())["status"] == "ok"
            server.terminate()
            server.wait(timeout=10)
            server = start_redis(port, tmp_path)  # empty: states are gone, not an error
            if first == "get":
                assert await store.get("v") is None
            elif first == "put":
                await store.put("v", sample_state(1))
            elif first == "delete":
                assert await store.delete("v") is False
            else:
                assert (await store.stats())["status"] == "ok"
        finally:
            await store.close()

    try:
        run(session())
    finally:
        server.terminate()
        server.wait(timeout=10)
