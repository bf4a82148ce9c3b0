"""The minimal Redis client of the per-event hot path: replies parsed, matched, failed."""

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from adarec.errors import UserError
from adarec.serve.resp import RespClient, _Incomplete, encode_command, parse_reply
from tests.serve.conftest import free_port, start_redis


def test_commands_and_replies():
    assert encode_command(("SET", "k", b"\x00v", 3)) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n$1\r\n3\r\n"
    )
    buffer = b"$3\r\nabc\r\n$-1\r\n:42\r\n+OK\r\n-ERR bad\r\n*2\r\n:1\r\n$1\r\nx\r\n"
    replies, pos = [], 0
    while pos < len(buffer):
        reply, pos = parse_reply(buffer, pos)
        replies.append(reply)
    assert replies[:4] == [b"abc", None, 42, "OK"]
    assert isinstance(replies[4], ResponseError) and str(replies[4]) == "ERR bad"
    assert replies[5] == [1, b"x"]
    for cut in (2, 6, 8):  # a reply split across reads waits for the rest
        with pytest.raises(_Incomplete):
            parse_reply(b"$3\r\nabc\r\n"[:cut], 0)


def test_against_redis(redis_url):
    async def session():
        client = RespClient.from_url(redis_url)
        assert await client.execute("SET", "resp:k", b"\x00\xffdata") == "OK"
        # Pipelined from many tasks on one connection: each gets its own reply.
        keys = [f"resp:{n}" for n in range(50)]
        await asyncio.gather(*(client.execute("SET", key, key) for key in keys))
        values = await asyncio.gather(*(client.execute("GET", key) for key in keys))
        assert values == [key.encode() for key in keys]
        assert await client.execute("GET", "resp:k") == b"\x00\xffdata"
        assert await client.execute("GET", "resp:missing") is None
        with pytest.raises(ResponseError, match="NOSCRIPT"):
            await client.execute("EVALSHA", "0" * 40, 0)
        assert await client.execute("EVAL", "return ARGV[1]", 0, "x") == b"x"
        await client.close()
        assert await client.execute("GET", "resp:k") == b"\x00\xffdata"  # reconnects
        await client.close()

    asyncio.run(session())


def test_unreachable_redis_is_a_connection_error():
    async def session():
        client = RespClient.from_url("redis://127.0.0.1:1/0", timeout=2)
        with pytest.raises(RedisConnectionError, match="cannot connect to Redis at 127.0.0.1:1"):
            await client.execute("GET", "k")

    asyncio.run(session())


def test_urls():
    client = RespClient.from_url("redis://user:p%40ss@example:6380/3")
    assert (client.host, client.port, client.db) == ("example", 6380, 3)
    assert (client.username, client.password, client.ssl) == ("user", "p@ss", None)
    assert RespClient.from_url("rediss://h/0").ssl is not None
    unix = RespClient.from_url("unix:///run/redis.sock?db=2")
    assert (unix.path, unix.db) == ("/run/redis.sock", 2)


@pytest.mark.parametrize(
    "url, message",
    [
        ("redis://h/abc", "the database must be a number; got 'abc'"),
        ("redis://h/-1", "the database must be a number"),
        ("unix:///run/redis.sock?db=x", "the database must be a number; got 'x'"),
        ("redis://h:port/0", "Port could not be cast"),
        ("redis://h:99999/0", "Port out of range"),
        ("redis://[::1/0", "Invalid IPv6 URL"),
        ("redis://h/0?db=3", "options after '\\?' are not supported"),
        ("unix://", "no socket path"),
        ("redis://:secret@/0", "no host name"),
        ("http://h/0", "not redis://, rediss:// or unix://"),
    ],
)
def test_a_malformed_url_is_one_user_error(url, message):
    with pytest.raises(UserError, match=message) as caught:
        RespClient.from_url(url)
    assert "malformed Redis URL" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_the_first_command_after_a_redis_restart_succeeds(tmp_path):
    port = free_port()
    server = start_redis(port, tmp_path)

    async def session():
        nonlocal server
        client = RespClient.from_url(f"redis://127.0.0.1:{port}/0", timeout=5)
        try:
            assert await client.execute("SET", "k", "v") == "OK"
            server.terminate()
            server.wait(timeout=10)
            # Restarted while the client's connection sat idle (the loop has not seen the
            # old connection close): the next command is served by the new Redis.
            server = start_redis(port, tmp_path)
            assert await client.execute("GET", "k") is None
            assert await client.execute("SET", "k", "w") == "OK"
        finally:
            await client.close()

    try:
        asyncio.run(session())
    finally:
        server.terminate()
        server.wait(timeout=10)
