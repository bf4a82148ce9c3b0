"""A minimal Redis client for the per-event hot path: one connection, commands pipelined.

``redis.asyncio`` costs ~80 us of Python per command here (its connection pool, command
packing and response machinery; hiredis did not change it measurably), against ~30 us for
the loopback round trip itself; ``/events`` makes two commands per event. This client
writes each command on one asyncio connection and resolves replies in order (RESP2 is
answered in order), so concurrent events share the connection without waiting for each
other. It speaks only what the state store needs (bulk strings, integers, status, errors,
arrays); errors are ``redis`` exceptions, so callers handle both clients alike.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adarec.errors import UserError


def _shown(url: str) -> str:
    """``url`` for an error message: quoted, without a password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        url = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return repr(url)


def _db_number(shown: str, text: str) -> int:
    """The database of a Redis URL: a number 0 or more (never silently database 0)."""
    if not text.isascii() or not text.isdigit():
        raise UserError(f"malformed Redis URL {shown}: the database must be a number; got {text!r}")
    return int(text)


class _Incomplete(Exception):
    """More bytes are needed to finish the reply."""


def encode_command(args: tuple[Any, ...]) -> bytes:
    """A command as a RESP array of bulk strings (str as UTF-8, int as its digits)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


def parse_reply(buffer: bytearray | bytes, pos: int) -> tuple[Any, int]:
    """One reply from ``buffer`` at ``pos`` and the position after it; _Incomplete if the
    buffer ends first. An error reply is returned as a ResponseError (not raised)."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buffer[pos : pos + 1], bytes(buffer[pos + 1 : end])
    pos = end + 2
    if kind == b"$":
        length = int(line)
        if length < 0:
            return None, pos
        if len(buffer) < pos + length + 2:
            raise _Incomplete
        return bytes(buffer[pos : pos + length]), pos + length + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line.decode(), pos
    if kind == b"-":
        return ResponseError(line.decode(errors="replace")), pos
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse_reply(buffer, pos)
            items.append(item)
        return items, pos
    raise RedisConnectionError(f"unexpected reply from Redis: {bytes(buffer[pos - 2 :])[:40]!r}")


class _Protocol(asyncio.Protocol):
    """Replies resolve the waiting futures first in, first out."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.buffer = bytearray()
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        pos = 0
        try:
            while self.waiting:
                reply, pos = parse_reply(self.buffer, pos)
                future = self.waiting.popleft()
                if future.done():  # timed out: the connection is being dropped anyway
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except _Incomplete:
            pass
        except RedisConnectionError as exc:
            self.connection_lost(exc)
            return
        del self.buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.lost)
        if self.transport is not None:
            self.transport.close()


class RespClient:
    """``await client.execute("GET", key)``; connects (and reconnects) on demand."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        username: str | None = None,
        path: str | None = None,
        use_ssl: bool = False,
        timeout: float = 5.0,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.db, self.password, self.username = db, password, username
        self.ssl = ssl.create_default_context() if use_ssl else None
        self.timeout = timeout
        self.protocol: _Protocol | None = None
        self.connecting: asyncio.Lock | None = None

    @classmethod
    def from_url(cls, url: str, timeout: float = 5.0) -> RespClient:
        """``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or
        ``unix://path[?db=N]``; UserError naming what is wrong in any other URL."""
        shown = _shown(url)
        try:
            parts = urlsplit(url)
            port = parts.port  # ValueError for a port that is not a number in range
        except ValueError as exc:
            raise UserError(f"malformed Redis URL {shown}: {exc}") from None
        query = parse_qs(parts.query, keep_blank_values=True)
        # The two clients of RedisStore must agree: only what both read alike is accepted.
        allowed = {"db"} if parts.scheme == "unix" else set()
        if set(query) - allowed or any(len(v) > 1 for v in query.values()):
            raise UserError(
                f"malformed Redis URL {shown}: options after '?' are not supported "
                "(the database goes in the path: redis://host:port/db, unix:///path?db=N)"
            )
        password = unquote(parts.password) if parts.password else None
        username = unquote(parts.username) if parts.username else None
        if parts.scheme == "unix":
            if not parts.path:
                raise UserError(f"malformed Redis URL {shown}: no socket path (unix:///path)")
            db = _db_number(shown, query.get("db", ["0"])[0])
            return cls(
                db=db, password=password, username=username, path=parts.path, timeout=timeout
            )
        if parts.scheme not in ("redis", "rediss"):
            raise UserError(f"malformed Redis URL {shown}: not redis://, rediss:// or unix://")
        if parts.netloc and not parts.hostname:
            raise UserError(f"malformed Redis URL {shown}: no host name")
        return cls(
            parts.hostname or "127.0.0.1",
            port or 6379,
            _db_number(shown, parts.path.strip("/") or "0"),
            password,
            username,
            use_ssl=parts.scheme == "rediss",
            timeout=timeout,
        )

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            if self.path:
                _, protocol = await asyncio.wait_for(
                    loop.create_unix_connection(_Protocol, self.path), self.timeout
                )
            else:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(_Protocol, self.host, self.port, ssl=self.ssl),
                    self.timeout,
                )
        except (TimeoutError, OSError) as exc:
            where = self.path or f"{self.host}:{self.port}"
            raise RedisConnectionError(f"cannot connect to Redis at {where}: {exc}") from None
        try:
            if self.password is not None:
                auth = (self.username, self.password) if self.username else (self.password,)
                await self._send(protocol, ("AUTH", *auth))
            if self.db:
                await self._send(protocol, ("SELECT", self.db))
        except BaseException:
            protocol.connection_lost(None)  # closes it: a half-set-up connection is not kept
            raise
        self.protocol = protocol
        return protocol

    async def execute(self, *args: Any) -> Any:
        """The reply to one command; redis exceptions on errors, loss or timeout.

        A command written on a connection that had already served others and then finds it
        lost is sent once more on a new connection: after Redis restarted, the first
        command is written before the event loop has seen the old connection close (it
        never reached the new Redis), and would otherwise fail for nothing.
        """
        protocol, fresh = await self._connection()
        try:
            return await self._send(protocol, args)
        except RedisConnectionError:
            if fresh:
                raise
        protocol, _ = await self._connection()
        return await self._send(protocol, args)

    async def _connection(self) -> tuple[_Protocol, bool]:
        """The open connection, and whether this call opened it."""
        protocol = self.protocol
        if protocol is not None and protocol.lost is None:
            return protocol, False
        if self.connecting is None:
            self.connecting = asyncio.Lock()
        async with self.connecting:  # one connection, however many callers wait
            protocol = self.protocol
            if protocol is not None and protocol.lost is None:
                return protocol, False
            self.protocol = None
            return await self._connect(), True

    async def _send(self, protocol: _Protocol, args: tuple[Any, ...]) -> Any:
        """Write one command on ``protocol`` and wait for its reply."""
        assert protocol.transport is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.waiting.append(future)
        protocol.transport.write(encode_command(args))
        timer = asyncio.get_running_loop().call_later(self.timeout, self._expire, protocol, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, protocol: _Protocol, future: asyncio.Future[Any]) -> None:
        """A reply that did not come in time: fail it and drop the connection (the replies
        after it can no longer be matched to their commands)."""
        if not future.done():
            future.set_exception(RedisTimeoutError(f"no reply from Redis in {self.timeout} s"))
            protocol.connection_lost(None)

    async def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None
