"""A minimal pipelining Redis client for the scorer's two hot pipelines (issue 12).

redis-py spends most of a decision's Redis CPU in Python around the bytes: per command
``pack_command`` and an ``encode`` per argument (with its isinstance chain), a HIMPORT
check, and per reply ``read_response`` inside an ``async with timeout`` block. The
scorer sends two kinds of pipeline on every decision — the coalesced HMGET read and
the decision writer's record commands — and nothing else on the hot path. Here they go
over a raw asyncio connection: the request is one RESP ``bytes`` (:func:`pack`), the
replies are parsed by hiredis (the C parser redis-py uses too) in ``data_received``,
and one future per pipeline (not per command) resolves with the list of replies.
Replies are the objects redis-py's parser gives with ``decode_responses=False`` (bytes,
ints, lists, ``None``; no per-command response callbacks: HMGET has none, and the
records' replies are only checked for errors); an error reply is an exception instance
in its place, mapped the way redis-py maps them (``NOSCRIPT`` →
:class:`redis.exceptions.NoScriptError`, ...).

Everything else — scripts loading, stats, reset, the reward path, Redis Cluster — stays
on redis-py. :func:`fast_params` says whether a redis-py client can be mirrored (a plain
TCP connection without a credential provider; TLS or a unix socket: no, redis-py keeps
serving those pipelines).

Failure semantics match redis-py's: a pipeline whose replies do not all come within
``timeout_s`` (redis-py's ``socket_timeout``) fails with
:class:`redis.exceptions.TimeoutError` and the connection is dropped (its later replies
would be out of step); a lost connection fails every pipeline on it with
:class:`redis.exceptions.ConnectionError`; the next pipeline reconnects (AUTH and SELECT
as the URL says), within ``connect_timeout_s``.
"""

from __future__ import annotations

import asyncio
import collections
import logging

import hiredis
from redis import exceptions as rex

from .hot import lib as _hot

log = logging.getLogger(__name__)

# tipsml.hot: RESP packing in C (bytes, str, exact int and float arguments only)
c_pack = _hot.resp_pack if _hot is not None else None

_ERRORS = {  # error prefix -> redis-py's class (as redis-py's parser maps them)
    "NOSCRIPT": rex.NoScriptError, "NOPERM": rex.NoPermissionError,
    "NOAUTH": rex.AuthenticationError, "WRONGPASS": rex.AuthenticationError,
    "BUSY": rex.BusyLoadingError, "LOADING": rex.BusyLoadingError,
    "READONLY": rex.ReadOnlyError, "EXECABORT": rex.ExecAbortError,
    "MOVED": rex.ResponseError, "ASK": rex.ResponseError,
}


class _ReplyError(Exception):
    """What hiredis builds for an error reply; mapped to redis-py's class below."""


def _map_error(e: _ReplyError) -> Exception:
    text = str(e)
    cls = _ERRORS.get(text.split(" ", 1)[0], rex.ResponseError)
    if cls is rex.NoScriptError or cls is rex.NoPermissionError:
        text = text.split(" ", 1)[1] if " " in text else text  # redis-py drops the code
    return cls(text)


def _arg(a) -> bytes:
    """One argument as redis-py's Encoder would send it (bytes, str, int, float)."""
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        return a.encode()
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        raise rex.DataError(f"Invalid input of type: '{type(a).__name__}'")
    return repr(a).encode()


encode_arg = _arg  # for callers that write RESP themselves (StateStore._record_resp)


def pack(*args) -> bytes:
    """One command in RESP (an array of bulk strings); in C where it is built."""
    if c_pack is not None:
        try:
            return c_pack(*args)
        except TypeError:  # another type: redis-py's answer (DataError) from the Python packer
            pass
    return pack_python(*args)


def pack_python(*args) -> bytes:
    """:func:`pack` in Python."""
    out = [b"*%d\r\n" % len(args)]
    add = out.append
    for a in args:
        t = type(a)
        if t is str:
            a = a.encode()
        elif t is not bytes:
            a = _arg(a)
        add(b"$%d\r\n%b\r\n" % (len(a), a))
    return b"".join(out)


class _Pending:
    """One pipeline waiting for its ``n`` replies: a future resolves with them, or a
    callback ``cb(replies, error)`` is called with them (no future, no loop turn between
    the reply and its reader: the scorer's coalesced read)."""

    __slots__ = ("cb", "fut", "n", "replies", "t0")

    def __init__(self, n: int, fut: asyncio.Future | None, t0: float, cb=None):
        self.n = n
        self.replies: list = []
        self.fut = fut
        self.cb = cb
        self.t0 = t0

    def done(self, replies: list | None, err: BaseException | None) -> None:
        if self.cb is not None:
            cb, self.cb = self.cb, None
            try:
                cb(replies, err)
            except Exception:  # noqa: BLE001 - a reader's bug must not stop the connection
                log.exception("Redis pipeline callback failed")
        elif self.fut is not None and not self.fut.done():
            if err is None:
                self.fut.set_result(replies)
            else:
                self.fut.set_exception(err)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: FastRedis):
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the one it was made on
        self.reader = hiredis.Reader(replyError=_ReplyError)
        self.waiting: collections.deque[_Pending] = collections.deque()
        self.closed = False
        # one timer watches the oldest pipeline (not a timer per pipeline: issue 12)
        self.watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        while True:
            try:
                r = reader.gets()
            except hiredis.ProtocolError as e:  # out of step: nothing after this is sound
                self.fail(rex.ConnectionError(f"Redis protocol error: {e}"))
                return
            if r is False:
                return
            if not waiting:  # a reply nobody asked for: out of step, start afresh
                self.fail(rex.ConnectionError("unexpected reply from Redis"))
                return
            head = waiting[0]
            if isinstance(r, _ReplyError):
                r = _map_error(r)
            head.replies.append(r)
            if len(head.replies) == head.n:
                waiting.popleft()
                head.done(head.replies, None)

    def connection_lost(self, exc) -> None:
        self.fail(rex.ConnectionError(f"Redis connection lost: {exc!r}" if exc else
                                      "Redis closed the connection"))

    def fail(self, err: Exception) -> None:
        """The connection is no longer usable: every pipeline on it fails with ``err``."""
        if not self.closed:
            self.closed = True
            if self.owner._proto is self:
                self.owner._proto = None
            if self.transport is not None:
                self.transport.abort()
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        waiting, self.waiting = self.waiting, collections.deque()
        for p in waiting:
            p.done(None, err)

    def watch_oldest(self, timeout_s: float) -> None:
        """The oldest pipeline waits longer than ``timeout_s``: the connection fails (a
        reply that late means the server or the network is stuck, and the replies behind
        it are out of reach). Otherwise the timer is set again for the oldest one left."""
        self.watch = None
        if self.closed or not self.waiting:
            return
        now = self.loop.time()
        due = self.waiting[0].t0 + timeout_s
        if now >= due:
            self.fail(rex.TimeoutError(f"Timeout reading from Redis ({timeout_s:g} s)"))
        else:
            self.watch = self.loop.call_at(due, self.watch_oldest, timeout_s)


class FastRedis:
    """One pipelining connection (reconnected on demand). ``execute(packed, n)`` sends
    ``n`` commands packed in one ``bytes`` and returns their ``n`` replies."""

    def __init__(self, host: str, port: int, *, username: str | None = None,
                 password: str | None = None, db: int = 0, timeout_s: float | None = 2.0,
                 connect_timeout_s: float | None = 2.0):
        self.host, self.port = host, port
        self.username, self.password, self.db = username, password, int(db or 0)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        proto = _Protocol(self)
        proto.loop = loop
        coro = loop.create_connection(lambda: proto, self.host, self.port)
        try:
            await asyncio.wait_for(coro, self.connect_timeout_s)
        except TimeoutError:
            raise rex.TimeoutError("Timeout connecting to Redis") from None
        except OSError as e:
            raise rex.ConnectionError(f"Error connecting to Redis {self.host}:{self.port}: "
                                      f"{e}") from None
        hello = []
        if self.password is not None:
            hello.append(pack("AUTH", *((self.username,) if self.username else ()),
                              self.password))
        if self.db:
            hello.append(pack("SELECT", self.db))
        if hello:
            for r in await self._send(proto, b"".join(hello), len(hello)):
                if isinstance(r, Exception):  # WRONGPASS -> AuthenticationError, ...
                    proto.fail(rex.ConnectionError("Redis handshake failed"))
                    raise r
        return proto

    async def _conn(self) -> _Protocol:
        p = self._proto
        if p is not None and not p.closed:
            return p
        if self._connecting is None:  # one connect for every caller waiting on it
            self._connecting = asyncio.ensure_future(self._connect())
            try:
                self._proto = await asyncio.shield(self._connecting)
            finally:
                fut, self._connecting = self._connecting, None
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: a failed connect is raised to its callers
            return self._proto
        return await asyncio.shield(self._connecting)

    def _send(self, proto: _Protocol, data: bytes, n: int, cb=None) -> asyncio.Future | None:
        loop = proto.loop  # not asyncio.get_running_loop(): a getpid() syscall per call
        p = _Pending(n, None if cb is not None else loop.create_future(), loop.time(), cb)
        proto.waiting.append(p)
        if self.timeout_s and proto.watch is None:
            proto.watch = loop.call_at(p.t0 + self.timeout_s, proto.watch_oldest,
                                       self.timeout_s)
        proto.transport.write(data)
        return p.fut

    def send_nowait(self, data: bytes, n: int, cb=None) -> asyncio.Future | bool | None:
        """:meth:`execute` without a coroutine: the pipeline is written now and the future
        it returns resolves like ``execute``'s result (same timeout, same failures); with
        ``cb``, no future: ``cb(replies, None)`` or ``cb(None, error)`` is called from the
        connection's reader (no loop turn in between) and ``True`` is returned. ``None``
        when the connection is not up (the caller takes the ``execute`` path, which
        connects). The scorer's coalesced read goes out this way: no task per read batch,
        no future between the reply and the requests waiting for it (issue 12)."""
        p = self._proto
        if n <= 0 or p is None or p.closed or p.transport is None or p.loop is None:
            return None
        fut = self._send(p, data, n, cb)
        return True if cb is not None else fut

    async def execute(self, data: bytes, n: int) -> list:
        """Replies of the ``n`` commands in ``data`` (error replies as exception
        instances in their place); raises on a connection failure or timeout."""
        if n <= 0:
            return []
        proto = await self._conn()
        return await self._send(proto, data, n)

    async def aclose(self) -> None:
        p, self._proto = self._proto, None
        if p is not None:
            p.fail(rex.ConnectionError("connection closed"))


def fast_params(client) -> dict | None:
    """Keyword arguments of :class:`FastRedis` mirroring a redis-py asyncio client, or
    None when it cannot be mirrored (a cluster, TLS, a unix socket, decoded replies, a
    credential provider): those clients keep their redis-py pipelines."""
    from redis.asyncio.connection import Connection

    pool = getattr(client, "connection_pool", None)
    if pool is None or pool.connection_class is not Connection:
        return None
    kw = pool.connection_kwargs
    if kw.get("decode_responses") or kw.get("credential_provider") is not None:
        return None
    return {"host": kw.get("host", "localhost"), "port": int(kw.get("port", 6379)),
            "username": kw.get("username"), "password": kw.get("password"),
            "db": kw.get("db", 0), "timeout_s": kw.get("socket_timeout"),
            "connect_timeout_s": kw.get("socket_connect_timeout")}
