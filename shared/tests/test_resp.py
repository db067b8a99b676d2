"""tipsml.resp, the raw RESP connection of the scorer's hot pipelines (issue 12), against
a real redis-server: the bytes it sends are redis-py's, the replies are what redis-py
gives, errors are redis-py's classes, and a lost, slow or restarted server fails the
pipelines on it and is reconnected."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.connection import Connection

from tipsml.resp import FastRedis, fast_params, pack

pytestmark = pytest.mark.system


@pytest.mark.parametrize("args", [
    ("PING",), ("SET", "k", b"\x00\xff\r\n", 1), ("ZADD", "z", 1712.5, "m:1", -3, "n"),
    ("HSET", "h", "é", "ü" * 300, "n", 10**20), ("EVALSHA", "a" * 40, 2, "k1", "k2", "x"),
    ("SET", "k", 1e-300, "", b""),
])
def test_pack_is_what_redis_py_sends(args):
    from tipsml.resp import pack_python

    want = b"".join(Connection().pack_command(*args))
    assert pack(*args) == want and pack_python(*args) == want  # C (where built) and Python


def test_pack_lengths_at_every_digit_boundary():
    """The C packer writes the lengths by hand and sizes its output exactly: argument
    lengths and counts either side of each power of ten, as redis-py writes them."""
    from tipsml.resp import pack_python

    for n in (0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 1001, 9999, 10000, 100000):
        for count in (1, 9, 10, 11, 63, 64):
            args = ("HSET", *[b"x" * n] * (count - 1))[:count]
            want = b"".join(Connection().pack_command(*args))
            assert pack(*args) == want == pack_python(*args), (n, count)


def test_pack_hands_other_types_to_the_python_packer():
    import enum

    class N(enum.IntEnum):
        A = 7

    class F(float):
        pass

    args = ("SET", N.A, F(2.5), 3)
    assert pack(*args) == b"".join(Connection().pack_command(*args))


def test_pack_refuses_what_redis_py_refuses():
    for bad in (True, None, [1], {"a": 1}):
        with pytest.raises(rex.DataError):
            pack("SET", "k", bad)


async def _pair(stack):
    if "cluster" in stack.redis_url:
        pytest.skip("the raw connection serves one Redis; a cluster keeps redis-py")
    r = aioredis.Redis.from_url(stack.redis_url)
    return r, FastRedis(**fast_params(r))


async def test_replies_and_errors_are_redis_pys(stack, uid):
    r, f = await _pair(stack)
    try:
        sha = await r.script_load("return {KEYS[1], ARGV[1], 7, false}")

        def cmds(h):  # the same commands on a fresh key for each client
            return [("HSET", h, "a", b"\x01\x02", "b", "x"), ("HMGET", h, "a", "nope", "b"),
                    ("EVALSHA", sha, 1, f"k:{uid}", "v"),
                    ("EVALSHA", "0" * 40, 0),          # NOSCRIPT
                    ("INCR", h),                       # WRONGTYPE
                    ("EXPIRE", h, 60), ("GET", f"missing:{uid}")]

        got = await f.execute(b"".join(pack(*c) for c in cmds(f"h1:{uid}")), len(cmds("")))
        pipe = r.pipeline(transaction=False)
        for c in cmds(f"h2:{uid}"):
            pipe.execute_command(*c)
        want = await pipe.execute(raise_on_error=False)
        assert len(got) == len(want) == len(cmds(""))
        for g, w in zip(got, want):
            if isinstance(w, Exception):
                assert type(g) is type(w) and str(g) == str(w)
            else:
                assert g == w
        assert isinstance(got[3], rex.NoScriptError)
        await r.delete(f"h1:{uid}", f"h2:{uid}")
    finally:
        await f.aclose()
        await r.aclose()


async def test_concurrent_pipelines_keep_their_replies(stack, uid):
    r, f = await _pair(stack)
    try:
        async def one(i):
            n = 1 + i % 7
            data = b"".join(pack("ECHO", f"{i}:{j}") for j in range(n))
            return i, n, await f.execute(data, n)
        for i, n, out in await asyncio.gather(*(one(i) for i in range(200))):
            assert out == [f"{i}:{j}".encode() for j in range(n)]
    finally:
        await f.aclose()
        await r.aclose()


async def test_killed_connection_fails_its_pipelines_then_reconnects(stack, uid):
    r, f = await _pair(stack)
    try:
        [cid] = await f.execute(pack("CLIENT", "ID"), 1)
        # the server drops the connection while a pipeline waits on it
        slow = asyncio.ensure_future(f.execute(pack("BLPOP", f"never:{uid}", 5), 1))
        await asyncio.sleep(0.1)
        assert await r.client_kill_filter(_id=cid) == 1  # only this connection
        with pytest.raises(rex.ConnectionError):
            await asyncio.wait_for(slow, 5)
        assert await f.execute(pack("PING"), 1) == [b"PONG"]  # a fresh connection
    finally:
        await f.aclose()
        await r.aclose()


async def test_no_reply_within_the_timeout_fails_and_the_next_call_reconnects(stack, uid):
    r, f = await _pair(stack)
    f.timeout_s = 0.2
    try:
        with pytest.raises(rex.TimeoutError):
            await f.execute(pack("BLPOP", f"never:{uid}", 2), 1)
        assert await f.execute(pack("PING"), 1) == [b"PONG"]
    finally:
        await f.aclose()
        await r.aclose()


async def test_unreachable_server_is_a_connection_error():
    f = FastRedis("127.0.0.1", 1, timeout_s=1.0, connect_timeout_s=1.0)
    with pytest.raises(rex.ConnectionError):
        await f.execute(pack("PING"), 1)


def test_only_plain_tcp_clients_are_mirrored():
    assert fast_params(aioredis.Redis.from_url("redis://u:p@h:7/3")) == {
        "host": "h", "port": 7, "username": "u", "password": "p", "db": 3,
        "timeout_s": None, "connect_timeout_s": None}
    assert fast_params(aioredis.Redis.from_url("rediss://h:7/0")) is None
    assert fast_params(aioredis.Redis.from_url("unix:///tmp/x.sock")) is None
    assert fast_params(aioredis.Redis.from_url("redis://h:7/0", decode_responses=True)) is None
