"""Where per-user streaming states live: in the server process (bounded LRU) or in Redis.

Both stores have the same asynchronous interface (``get``, ``put``, ``delete``, ``stats``),
so the service does not care which one it talks to. Redis holds each state serialised by
``encode_state``: a small binary record tagged with the format and the model, so that a
state written by another model (or another version of this one) is refused, never used.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch
from torch import nn

from adarec.errors import UserError
from adarec.serve.resp import RespClient
from adarec.serve.streaming import ForeignState, StreamState  # check_state raises it too

# 2: the history's digest (``StreamState.digest``). A state of format 1 is refused
# (ForeignState), so the service rebuilds it from the client's history.
FORMAT = 2
# magic, format, model tag, events, digest, kept items, tensors (the output first, [0, 0]
# if none)
_HEADER = struct.Struct("<4sB8sIQHH")
_SHAPE = struct.Struct("<HH")
_MAGIC = b"ADRS"


class StoreUnavailable(RuntimeError):
    """The state store cannot be reached (the service answers 503)."""


class StateConflict(RuntimeError):
    """Another process wrote the user's state between this one's read and write."""


def model_tag(model: nn.Module, layout: str = "torch") -> bytes:
    """8 bytes that identify a model's class and weights and the layout of its states
    (``Streamer.layout``): the version tag of its states."""
    digest = hashlib.sha256(type(model).__name__.encode())
    if layout != "torch":  # the PyTorch streamers' tags are those of earlier versions
        digest.update(layout.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.digest()[:8]


def encode_state(state: StreamState, tag: bytes) -> bytes:
    """The compact binary form: header, kept items (int32), tensors (float32 rows)."""
    output = state.output.unsqueeze(0) if state.output is not None else torch.zeros(0, 0)
    tensors = [output, *state.tensors]
    parts = [
        _HEADER.pack(
            _MAGIC, FORMAT, tag, state.events, state.digest, len(state.recent), len(tensors)
        ),
        np.asarray(state.recent, dtype="<i4").tobytes(),
    ]
    for tensor in tensors:
        parts.append(_SHAPE.pack(*tensor.shape))
        parts.append(tensor.detach().cpu().numpy().astype("<f4", copy=False).tobytes())
    return b"".join(parts)


def decode_state(data: bytes, tag: bytes, device: str | torch.device = "cpu") -> StreamState:
    """The state of ``encode_state`` (tensors on ``device``); ForeignState unless written
    for ``tag`` in this format."""
    try:
        magic, fmt, written_by, events, digest, kept, count = _HEADER.unpack_from(data)
    except struct.error:
        raise ForeignState("not an adarec streaming state (too short)") from None
    if magic != _MAGIC or fmt != FORMAT:
        # An older format is never read with this one's layout.
        raise ForeignState(f"not an adarec streaming state of format {FORMAT}")
    if written_by != tag:
        raise ForeignState("the state was written by another model")
    offset = _HEADER.size
    try:
        recent = np.frombuffer(data, "<i4", kept, offset).tolist()
        offset += 4 * kept
        tensors = []
        for _ in range(count):
            rows, cols = _SHAPE.unpack_from(data, offset)
            offset += _SHAPE.size
            values = np.frombuffer(data, "<f4", rows * cols, offset).reshape(rows, cols)
            tensors.append(torch.from_numpy(values.copy()).to(device))
            offset += 4 * rows * cols
    except (ValueError, struct.error):
        raise ForeignState("the state is truncated") from None
    if offset != len(data) or not tensors:
        raise ForeignState("the state has trailing or missing bytes")
    output = tensors[0][0] if tensors[0].numel() else None
    return StreamState(events, recent, tensors[1:], output, digest)


# What keeping one user's state in this process costs beyond its tensors' storage bytes
# (``StreamState.nbytes`` counts only the elements of each view), measured as RSS growth
# over 20,000 states of SASRec and NextItNet streamers on the CPU (3 to 9 tensors each):
# about 600 bytes per tensor (the Python object, its TensorImpl and StorageImpl, the
# aligned allocation) and 250 per user (the state object, its lists, the store's entry)
# besides the user id's string; a kept item is a list slot and an int object (36 bytes,
# where nbytes counts 4). Counted this way, --max-state-mb bounds the memory the states
# really take (tensor elements alone were a fifth to a half of it).
TENSOR_OVERHEAD = 600
STATE_OVERHEAD = 250
ITEM_OVERHEAD = 32


def footprint(user: str, state: StreamState) -> int:
    """Bytes that keeping ``state`` for ``user`` in this process takes (see TENSOR_OVERHEAD)."""
    tensors = [*state.tensors, *([state.output] if state.output is not None else [])]
    # A tensor's whole storage: the output is often a row of a bigger re-encoding's result.
    data = sum(t.untyped_storage().nbytes() for t in tensors)
    return (
        data
        + TENSOR_OVERHEAD * len(tensors)
        + (ITEM_OVERHEAD + 4) * len(state.recent)
        + STATE_OVERHEAD
        + sys.getsizeof(user)
    )


class StateStore(ABC):
    """Per-user states by user id; ``get`` is None for a user without one."""

    kind: str

    @abstractmethod
    async def get(self, user: str) -> StreamState | None: ...

    @abstractmethod
    async def put(self, user: str, state: StreamState) -> None: ...

    @abstractmethod
    async def delete(self, user: str) -> bool:
        """Forget ``user``; whether there was a state."""

    async def get_for_update(self, user: str) -> tuple[StreamState | None, Any]:
        """``get`` and a token of what was read, for ``put_if``. A state this model must not
        use raises ForeignState carrying the token (``exc.token``)."""
        return await self.get(user), None

    async def put_if(self, user: str, state: StreamState, token: Any) -> None:
        """``put``, unless the stored state changed since ``get_for_update`` returned
        ``token`` (then StateConflict: read again). Here nothing else writes: ``put``."""
        await self.put(user, state)

    @abstractmethod
    async def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None:
        return None


class MemoryStore(StateStore):
    """States in this process, least recently used evicted beyond ``max_users`` or
    ``max_bytes`` (counted as the memory a state takes, see ``footprint``)."""

    kind = "memory"

    def __init__(self, max_users: int, max_bytes: int):
        if max_users < 1 or max_bytes < 1:
            raise UserError("the state store needs room for at least one user and one byte")
        self.max_users, self.max_bytes = max_users, max_bytes
        self.states: OrderedDict[str, StreamState] = OrderedDict()
        # The bytes counted for each state when it was put: a state stepped in place
        # afterwards is still taken out with what it added.
        self.sizes: dict[str, int] = {}
        self.bytes = 0
        self.evictions = 0

    async def get(self, user: str) -> StreamState | None:
        state = self.states.get(user)
        if state is not None:
            self.states.move_to_end(user)
        return state

    async def put(self, user: str, state: StreamState) -> None:
        self._drop(user)
        self.states[user] = state
        self.sizes[user] = footprint(user, state)
        self.bytes += self.sizes[user]
        while len(self.states) > self.max_users or (
            self.bytes > self.max_bytes and len(self.states) > 1
        ):
            self._drop(next(iter(self.states)))
            self.evictions += 1

    def _drop(self, user: str) -> StreamState | None:
        state = self.states.pop(user, None)
        if state is not None:
            self.bytes -= self.sizes.pop(user)
        return state

    async def delete(self, user: str) -> bool:
        return self._drop(user) is not None

    async def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "status": "ok",
            "users": len(self.states),
            "bytes": self.bytes,
            "max_users": self.max_users,
            "max_bytes": self.max_bytes,
            "evictions": self.evictions,
        }


class RedisStore(StateStore):
    """States in Redis under ``adarec:state:USER``, tagged with the serving model.

    A state of another model is refused (``get`` raises ForeignState and counts it).
    Eviction is Redis's own (``maxmemory`` with an LRU policy).

    ``cache_users`` > 0: the states this process wrote last are also kept here (LRU, at
    most ``cache_users`` users and ``cache_bytes`` bytes), with the bytes written. An event
    of such a user then steps from the local copy and its check-and-set against those bytes
    proves the copy current: one round trip per event instead of two. A copy that another
    process made stale fails the check, is dropped, and the event is applied again from
    Redis. Worth it where a user's events mostly reach this process (one server, or sticky
    routing); with several workers behind one port, each miss costs a third round trip.
    """

    kind = "redis"
    PREFIX = "adarec:state:"

    def __init__(
        self,
        url: str,
        tag: bytes,
        device: str | torch.device = "cpu",
        cache_users: int = 0,
        cache_bytes: int = 0,
    ):
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.tag = tag
        self.device = device  # where loaded states go: the model's device
        self.refused = 0
        self.conflicts = 0  # check-and-set retries (another process wrote first)
        # GET and the check-and-set of every event: a leaner client (see adarec.serve.resp).
        # First: it refuses a malformed URL (redis-py reads a database that is not a
        # number as database 0).
        self.fast = RespClient.from_url(url, timeout=5)
        # /health's PING and INFO: once more on a new connection when Redis closed the old
        # one (restarted), as the fast client does.
        self.client = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[redis.exceptions.ConnectionError],
        )
        self.cache_users, self.cache_bytes = cache_users, cache_bytes
        # user: (state, the bytes stored in Redis, the bytes counted for both here)
        self.cache: OrderedDict[str, tuple[StreamState, bytes, int]] = OrderedDict()
        self.cached_bytes = 0
        self.cache_hits = 0

    async def get(self, user: str) -> StreamState | None:
        data = await self._call(self.fast.execute("GET", self.PREFIX + user))
        if data is None:
            return None
        try:
            return decode_state(data, self.tag, self.device)
        except ForeignState:
            self.refused += 1
            raise

    async def put(self, user: str, state: StreamState) -> None:
        self._forget(user)
        data = encode_state(state, self.tag)
        await self._call(self.fast.execute("SET", self.PREFIX + user, data))
        self._remember(user, state, data)

    def _remember(self, user: str, state: StreamState, data: bytes) -> None:
        """Keep ``state`` (stored as ``data``) as the local copy, least recent evicted."""
        if self.cache_users < 1:
            return
        size = len(data) + footprint(user, state)
        self.cache[user] = (state, data, size)
        self.cached_bytes += size
        while len(self.cache) > self.cache_users or self.cached_bytes > self.cache_bytes:
            self._forget(next(iter(self.cache)))

    def _forget(self, user: str) -> tuple[StreamState, bytes] | None:
        """Drop (and return) ``user``'s local copy: the state and the bytes stored."""
        cached = self.cache.pop(user, None)
        if cached is None:
            return None
        state, data, size = cached
        self.cached_bytes -= size
        return state, data

    async def delete(self, user: str) -> bool:
        self._forget(user)
        return bool(await self._call(self.fast.execute("DEL", self.PREFIX + user)))

    # SET only while the key still holds the bytes read (absent: ''): a check-and-set in
    # one round trip, atomic in Redis, so processes sharing this Redis never lose an update.
    CHECK_AND_SET = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
    CHECK_AND_SET_SHA = hashlib.sha1(CHECK_AND_SET.encode()).hexdigest()

    async def get_for_update(self, user: str) -> tuple[StreamState | None, Any]:
        # The local copy is taken out while the event uses it (the step may change it in
        # place); a successful check-and-set puts the new state back.
        cached = self._forget(user)
        if cached is not None:
            self.cache_hits += 1
            return cached
        data = await self._call(self.fast.execute("GET", self.PREFIX + user))
        if data is None:
            return None, b""
        try:
            return decode_state(data, self.tag, self.device), data
        except ForeignState as exc:
            self.refused += 1
            exc.token = data  # type: ignore[attr-defined]
            raise

    async def put_if(self, user: str, state: StreamState, token: Any) -> None:
        if token is None:  # read by ``get``: no check
            await self.put(user, state)
            return
        data = encode_state(state, self.tag)
        if not await self._call(self._check_and_set((1, self.PREFIX + user, token, data))):
            self.conflicts += 1
            raise StateConflict(f"the state of user {user!r} changed while it was updated")
        self._remember(user, state, data)

    async def _check_and_set(self, args: tuple[Any, ...]) -> Any:
        """EVALSHA of CHECK_AND_SET (EVAL when Redis does not hold the script yet)."""
        import redis

        try:
            return await self.fast.execute("EVALSHA", self.CHECK_AND_SET_SHA, *args)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.fast.execute("EVAL", self.CHECK_AND_SET, *args)

    async def _call(self, command: Awaitable[Any]) -> Any:
        import redis

        try:
            return await command
        except redis.RedisError as exc:
            location = _without_password(self.url)
            raise StoreUnavailable(f"the Redis state store {location} failed: {exc}") from None

    async def stats(self) -> dict[str, Any]:
        import redis

        location = _without_password(self.url)
        try:
            await self.client.ping()
            memory = await self.client.info("memory")
        except redis.RedisError as exc:
            return {"kind": self.kind, "status": f"unreachable: {exc}", "url": location}
        return {
            "kind": self.kind,
            "status": "ok",
            "url": location,
            "used_memory": memory.get("used_memory"),
            "refused_states": self.refused,
            "conflicts": self.conflicts,
            "cached_users": len(self.cache),
            "cache_hits": self.cache_hits,
        }

    async def close(self) -> None:
        await self.fast.close()
        await self.client.aclose()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def open_store(
    spec: str,
    tag: bytes,
    max_users: int,
    max_bytes: int,
    device: str | torch.device = "cpu",
    local_copy: bool = True,
) -> StateStore:
    """``memory`` or ``redis://host:port/db``; UserError for anything else.

    ``max_users`` and ``max_bytes`` bound the memory store, or the Redis store's local copy
    of the states this process wrote (``local_copy``: see RedisStore).
    """
    if spec == "memory":
        return MemoryStore(max_users, max_bytes)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        if not local_copy:
            return RedisStore(spec, tag, device)
        return RedisStore(spec, tag, device, max_users, max_bytes)
    raise UserError(
        f"--state must be 'memory' or a redis:// URL (redis://host:port/db); got {spec!r}"
    )
