"""The minimal Redis client of the per-event hot path: replies parsed, matched, failed."""

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from adarec.serve.resp import RespClient, _Incomplete, encode_command, parse_reply


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
