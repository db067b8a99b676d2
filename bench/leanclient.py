"""A load generator's NATS requester: the protocol by hand, for a fraction of nats-py's CPU.

The benches run the load generator on the same 2 cores as the system they measure. With
nats-py's ``request()`` the generator itself took 350–480 µs of CPU per request (a future,
a token from ``secrets``, the subscription's queue and task hops, …): a third of a core at
1,000 req/s that the scorer, NATS and Redis then lack, so the box's knee said as much
about the client as about the scorer. Production's clients run elsewhere.

:class:`LeanRequester` speaks the NATS client protocol directly on one connection: one
wildcard ``SUB`` on its own inbox (``_INBOX.<random>.*``), each request a ``PUB`` with
the reply subject ``_INBOX.<random>.<n>``, writes of one loop turn sent together, and
``MSG`` / ``HMSG`` frames parsed from the socket's bytes (``HMSG``: error replies carry
headers; their payload is what is returned). What the server sees is what any client
sends: the same subjects, reply inboxes and payloads. It does not reuse
:mod:`tipsml.messaging.fastsub` (the scorer's own hand-written connection) on purpose: the
load generator stays independent of the code it measures, so a framing bug cannot hide
on both ends of the wire. ``request`` has nats-py's shape
(``await req.request(subject, data, timeout)`` → an object with ``.data``), so the bench
switches between the two with ``--client``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from urllib.parse import urlparse


class Reply:
    __slots__ = ("data", "headers", "subject")

    def __init__(self, subject: str, data: bytes, headers: bytes | None):
        self.subject = subject
        self.data = data
        self.headers = headers


class _Proto(asyncio.Protocol):
    def __init__(self, owner: LeanRequester):
        self.owner = owner

    def connection_made(self, transport):
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a request is one small write: never held back by Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.owner._transport = transport

    def data_received(self, data: bytes):
        self.owner._feed(data)

    def connection_lost(self, exc):
        self.owner._lost(exc)


class LeanRequester:
    def __init__(self):
        self._transport = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._prefix = f"_INBOX.{os.urandom(8).hex()}."
        self._seq = 0
        self._waiting: dict[bytes, tuple[asyncio.Future, float]] = {}
        self._info = asyncio.Event()
        self._pong: asyncio.Future | None = None
        self._closed = False
        self._sweeper: asyncio.Task | None = None
        self.error: str | None = None

    @classmethod
    async def connect(cls, url: str, *, timeout: float = 5.0) -> LeanRequester:
        self = cls()
        u = urlparse(url if "://" in url else f"nats://{url}")
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(lambda: _Proto(self), u.hostname or
                                                      "127.0.0.1", u.port or 4222), timeout)
        await asyncio.wait_for(self._info.wait(), timeout)
        opts = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                "protocol": 1, "lang": "python-lean", "version": "1", "name": "bench-lean"}
        if u.username:
            opts.update(user=u.username, **({"pass": u.password} if u.password else {}))
        self._pong = loop.create_future()
        self._transport.write(b"CONNECT " + json.dumps(opts).encode() + b"\r\nSUB "
                              + self._prefix.encode() + b"* 1\r\nPING\r\n")
        await asyncio.wait_for(self._pong, timeout)
        if self.error:
            raise ConnectionError(self.error)
        self._sweeper = asyncio.create_task(self._sweep())
        return self

    # ------------------------------------------------------------------ requests
    def request(self, subject: str, data: bytes, timeout: float = 2.0) -> asyncio.Future:
        """A future of the reply (:class:`Reply`); ``TimeoutError`` past ``timeout``."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if self._closed:
            fut.set_exception(ConnectionError(self.error or "connection closed"))
            return fut
        self._seq += 1
        token = str(self._seq).encode()
        self._waiting[token] = (fut, time.monotonic() + timeout)
        self._out.append(b"PUB %s %s%s %d\r\n%s\r\n" % (subject.encode(), self._prefix.encode(),
                                                      token, len(data), data))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self._closed:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    async def _sweep(self) -> None:
        while not self._closed:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            late = [t for t, (_, dl) in self._waiting.items() if dl < now]
            for t in late:
                fut, _ = self._waiting.pop(t)
                if not fut.done():
                    fut.set_exception(TimeoutError("nats: timeout"))

    # ------------------------------------------------------------------ the socket's bytes
    def _feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while pos < n:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            head = bytes(buf[pos:eol])
            if head.startswith(b"MSG ") or head.startswith(b"HMSG "):
                parts = head.split()
                total = int(parts[-1])
                end = eol + 2 + total
                if end + 2 > n:
                    break  # the payload is not all here yet
                body = bytes(buf[eol + 2:end])
                hdr = None
                if parts[0] == b"HMSG":
                    hlen = int(parts[-2])
                    hdr, body = body[:hlen], body[hlen:]
                self._deliver(parts[1], body, hdr)
                pos = end + 2
                continue
            pos = eol + 2
            if head == b"PING":
                self._transport.write(b"PONG\r\n")
            elif head == b"PONG":
                if self._pong is not None and not self._pong.done():
                    self._pong.set_result(True)
            elif head.startswith(b"INFO "):
                self._info.set()
            elif head.startswith(b"-ERR"):
                self.error = head.decode(errors="replace")
                if self._pong is not None and not self._pong.done():
                    self._pong.set_result(False)
        del buf[:pos]

    def _deliver(self, subject: bytes, body: bytes, hdr: bytes | None) -> None:
        token = subject[subject.rfind(b".") + 1:]
        got = self._waiting.pop(token, None)
        if got is None:
            return  # answered after its timeout
        fut = got[0]
        if fut.done():
            return
        if hdr is not None and b" 503" in hdr.split(b"\r\n", 1)[0] and not body:
            fut.set_exception(ConnectionError("nats: no responders"))
        else:
            fut.set_result(Reply(subject.decode(), body, hdr))

    def _lost(self, exc) -> None:
        self._closed = True
        self.error = self.error or repr(exc)
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(self.error))
        self._waiting.clear()

    async def close(self) -> None:
        self._closed = True
        if self._sweeper:
            self._sweeper.cancel()
        if self._transport is not None:
            self._transport.close()
