"""A NATS connection for one hot request subscription, the client protocol by hand.

nats-py costs a responder 150–260 µs of CPU per request on the project's 2-core box (its
parser, a ``Msg`` object, the subscription's queue and task hop, the flusher task that
wakes for each reply); speaking the protocol directly on an asyncio connection costs
80–115 µs (``bench/echo_floor.py``). The scorer serves ``tips.score`` on such a
connection (``SCORER_NATS_FAST_PATH``, on by default; issue 12); everything else —
JetStream, the Services API's control subjects, the other verbs — stays on nats-py.

What it does, and no more: connect (user/password or token from the settings or the URL;
not TLS: :meth:`FastConnection.from_settings` answers ``None`` then and the caller keeps
nats-py), ``SUB`` with a queue group, parse ``MSG``/``HMSG`` frames into
:class:`FastMsg` (``subject``, ``reply``, ``data``, ``headers``, ``respond``), write the
replies of one loop turn together (``PUB``/``HPUB``), answer the server's ``PING``, send
its own every ``ping_interval`` s and reconnect (to the next server of ``NATS_URL``,
forever, every ``reconnect_wait`` s) when the connection is lost or two pings go
unanswered, subscribing again. A reply that finds the connection down is dropped (the
requester times out and retries, as after any lost reply). ``unsubscribe`` then
``close`` at shutdown: the in-flight requests answer in between (the Services API's
``wait_idle``).

Messages are handed to a *synchronous* callback (the service's dispatcher, which starts
one task per request): no coroutine per message on the way in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable
from urllib.parse import unquote, urlparse

from ..hot import lib as _hot

log = logging.getLogger(__name__)

_CRLF = b"\r\n"
# the frames of a read buffer, parsed in C where it is built (tipsml.hot; issue 12)
_frames = _hot.nats_frames if _hot is not None else None


class FastMsg:
    """A request as the endpoint helper reads it (nats-py's ``Msg`` shape, the parts used)."""

    __slots__ = ("_client", "data", "headers", "reply", "subject")

    def __init__(self, client: FastConnection, subject: str, reply: str, data: bytes,
                 headers: dict[str, str] | None):
        self._client = client
        self.subject = subject
        self.reply = reply
        self.data = data
        self.headers = headers

    async def respond(self, data: bytes) -> None:
        self.respond_now(data)

    def respond_now(self, data: bytes, headers: dict[str, str] | None = None) -> None:
        """The reply, written with the others of this loop turn (no coroutine: the
        endpoint helper's synchronous path, :meth:`tipsml.messaging.endpoint.Endpoint.start`)."""
        if not self.reply:
            raise ValueError("no reply subject")
        self._client.write_pub(self.reply, data, headers)


class FastSub:
    __slots__ = ("_conn", "cb", "queue", "sid", "subject")

    def __init__(self, conn: FastConnection, sid: int, subject: str, queue: str, cb):
        self._conn = conn
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self.cb = cb

    async def unsubscribe(self) -> None:
        await self._conn.unsubscribe(self)


class _Proto(asyncio.Protocol):
    __slots__ = ("buf", "conn", "transport")

    def __init__(self, conn: FastConnection):
        self.conn = conn
        self.transport = None
        self.buf = bytearray()  # what this connection read and did not parse yet

    def connection_made(self, transport):
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a reply is one small write: never held back by Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def data_received(self, data: bytes):
        self.conn._feed(self, data)

    def connection_lost(self, exc):
        self.conn._lost(self, exc)


def _parse_headers(raw: bytes) -> dict[str, str]:
    """``NATS/1.0[ status]\\r\\nKey: Value\\r\\n…`` → a dict (the status line is skipped)."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF)[1:]:
        if not line:
            continue
        k, sep, v = line.partition(b":")
        if sep:
            out[k.strip().decode(errors="replace")] = v.strip().decode(errors="replace")
    return out


def _encode_headers(headers: dict[str, str]) -> bytes:
    return (b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
            + _CRLF)


class FastConnection:
    def __init__(self, servers: list[str], *, user: str | None = None,
                 password: str | None = None, name: str = "fastsub",
                 connect_timeout: float = 2.0, reconnect_wait: float = 0.25,
                 ping_interval: float = 20.0):
        if not servers:
            raise ValueError("no NATS server")
        self.servers = servers
        self.user = user
        self.password = password
        self.name = name
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self.ping_interval = ping_interval
        self._proto: _Proto | None = None   # where writes go (from the CONNECT on)
        self._ready: _Proto | None = None   # the connection once its handshake succeeded
        self._out: list[bytes] = []
        self._flush_scheduled = False
        # the loop it connected on: asyncio.get_running_loop() costs a getpid() syscall,
        # and a write is made per reply
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: dict[int, FastSub] = {}
        self._sid = 0
        self._closing = False
        self._info: asyncio.Future | None = None
        self._pong: asyncio.Future | None = None
        self._pings_out = 0
        self._server_i = 0
        self._reconnecting: asyncio.Task | None = None
        self._pinger: asyncio.Task | None = None
        self.reconnects = 0
        self.dropped_replies = 0
        # called (synchronously) when the connection in use is lost: what waits for an
        # answer on it (the decision log's acks) gives up at once instead of timing out
        self.on_lost: list[Callable[[], None]] = []
        # called (synchronously) once every message of a read was handed on: what the
        # messages queued (the scorer's Redis reads) leaves now, not a loop turn later
        self.after_read: list[Callable[[], None]] = []
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings, name: str) -> FastConnection | None:
        """The connection for ``settings`` (``NATS_URL``, ``NATS_USER``/``NATS_PASSWORD``),
        or ``None`` where it does not apply (TLS: nats-py keeps the subscription)."""
        servers = [s.strip() for s in settings.nats_url.split(",") if s.strip()]
        if getattr(settings, "nats_tls_ca", None) or any(
                urlparse(s if "://" in s else f"nats://{s}").scheme in ("tls", "wss", "ws")
                for s in servers):
            return None
        return cls(servers, user=getattr(settings, "nats_user", None) or None,
                   password=getattr(settings, "nats_password", None) or None, name=name)

    # ------------------------------------------------------------------ connecting
    async def connect(self) -> FastConnection:
        """Connect to the first server that takes us (in ``NATS_URL`` order); raises the
        last error when none does."""
        err: BaseException | None = None
        for _ in range(len(self.servers)):
            try:
                await self._connect_one(self.servers[self._server_i % len(self.servers)])
                break
            except (OSError, TimeoutError, ConnectionError) as e:
                err = e
                self._server_i += 1
        else:
            raise ConnectionError(f"no NATS server took the connection: {err!r}")
        if self._pinger is None:
            self._pinger = asyncio.get_running_loop().create_task(self._ping_loop())
        return self

    async def _connect_one(self, url: str) -> None:
        u = urlparse(url if "://" in url else f"nats://{url}")
        self._loop = loop = asyncio.get_running_loop()
        self._info = loop.create_future()
        self._pong = None
        proto = _Proto(self)
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: proto, u.hostname or "127.0.0.1", u.port or 4222), self.connect_timeout)
            info = await asyncio.wait_for(self._info, self.connect_timeout)
            if info.get("tls_required"):
                raise ConnectionError("the server requires TLS (use nats-py: no fast path)")
            opts = {"verbose": False, "pedantic": False, "headers": True,
                    "no_responders": True, "protocol": 1, "lang": "python-tipsml-fastsub",
                    "version": "1", "name": self.name}
            user = self.user or (unquote(u.username) if u.username else None)
            password = self.password if self.user else (unquote(u.password) if u.password
                                                         else None)
            if user and password is not None:
                opts.update(user=user, **{"pass": password})
            elif user:
                opts["auth_token"] = user
            self._pong = loop.create_future()
            self._pings_out = 0
            subs = b"".join(self._sub_line(s) for s in self._subs.values())
            proto.transport.write(b"CONNECT " + json.dumps(opts).encode() + _CRLF + subs
                                  + b"PING\r\n")
            self._proto = proto
            ok = await asyncio.wait_for(self._pong, self.connect_timeout)
            if not ok:
                raise ConnectionError(f"NATS refused the connection: {self.last_error}")
            self._ready = proto
        except BaseException:
            if self._proto is proto:
                self._proto = None
            if proto.transport is not None:
                proto.transport.abort()
            raise

    @staticmethod
    def _sub_line(s: FastSub) -> bytes:
        q = f" {s.queue}" if s.queue else ""
        return f"SUB {s.subject}{q} {s.sid}\r\n".encode()

    def _lost(self, proto: _Proto, exc) -> None:
        if proto is self._proto:
            self._proto = None
        # a handshake in progress fails at once
        if self._info is not None and not self._info.done():
            self._info.set_exception(ConnectionError("connection closed"))
        if self._pong is not None and not self._pong.done():
            self._pong.set_result(False)
        if self._closing or proto is not self._ready:
            return  # closing, or an attempt that never became the connection
        self._ready = None
        log.warning("%s: NATS connection lost (%r): reconnecting", self.name, exc)
        for cb in self.on_lost:
            try:
                cb()
            except Exception:  # noqa: BLE001 - one listener never stops the reconnect
                log.exception("%s: on_lost callback failed", self.name)
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.reconnect_wait)
            self._server_i += 1
            try:
                await self._connect_one(self.servers[self._server_i % len(self.servers)])
            except (OSError, TimeoutError, ConnectionError) as e:
                log.debug("%s: reconnect failed: %r", self.name, e)
                continue
            self.reconnects += 1
            log.info("%s: NATS connection back (%d subscriptions)", self.name, len(self._subs))
            return

    async def _ping_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.ping_interval)
            proto = self._proto
            if proto is None:
                continue
            if self._pings_out >= 2:  # the server stopped answering: start again
                log.warning("%s: 2 pings unanswered: reconnecting", self.name)
                proto.transport.abort()
                continue
            self._pings_out += 1
            self._write(b"PING\r\n")

    # ------------------------------------------------------------------ subscriptions
    async def subscribe(self, subject: str, queue: str = "",
                        cb: Callable[[FastMsg], None] | None = None) -> FastSub:
        """``cb(msg)`` (synchronous) for each message of ``subject`` in ``queue``; returns
        when the server has the subscription."""
        if cb is None:
            raise ValueError("a callback is required")
        self._sid += 1
        sub = FastSub(self, self._sid, subject, queue, cb)
        self._subs[sub.sid] = sub
        if self._proto is not None:
            self._write(self._sub_line(sub))
            await self.flush()
        return sub

    async def unsubscribe(self, sub: FastSub) -> None:
        if self._subs.pop(sub.sid, None) is not None and self._proto is not None:
            self._write(f"UNSUB {sub.sid}\r\n".encode())
            await self.flush()

    async def flush(self, timeout: float = 2.0) -> None:
        """Everything written so far has reached the server (a PING answered)."""
        if self._proto is None:
            return
        loop = asyncio.get_running_loop()
        if self._pong is None or self._pong.done():
            self._pong = loop.create_future()
        pong = self._pong
        self._write(b"PING\r\n")
        try:
            await asyncio.wait_for(asyncio.shield(pong), timeout)
        except TimeoutError:
            log.debug("%s: flush timed out", self.name)

    # ------------------------------------------------------------------ writing
    @property
    def connected(self) -> bool:
        """Whether writes go anywhere now (a write while it is not is dropped)."""
        return self._proto is not None and self._ready is self._proto

    def write_pub(self, subject: str, data: bytes,
                  headers: dict[str, str] | bytes | None = None, reply: str = "") -> None:
        """Queue one ``PUB``/``HPUB`` (sent with the others of this loop turn); ``reply``:
        where the answer goes (the decision log's JetStream acks); ``headers`` a dict, or
        the header block already encoded (``NATS/1.0\\r\\n…\\r\\n\\r\\n``)."""
        if self._proto is None:
            self.dropped_replies += 1
            return
        to = b"%s %s" % (subject.encode(), reply.encode()) if reply else subject.encode()
        if headers:
            h = headers if type(headers) is bytes else _encode_headers(headers)
            self._write(b"HPUB %s %d %d\r\n%s%s\r\n" % (to, len(h), len(h) + len(data), h,
                                                        data))
        else:
            self._write(b"PUB %s %d\r\n%s\r\n" % (to, len(data), data))

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "",
                      headers: dict[str, str] | None = None) -> None:
        """nats-py's ``publish`` for what the endpoint helper sends (error replies with
        their headers); ``reply`` is not supported (nothing here asks for one)."""
        if reply:
            raise ValueError("FastConnection.publish sends no requests")
        self.write_pub(subject, payload, headers)

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_out)

    def _flush_out(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self._proto is not None and self._proto.transport is not None:
            self._proto.transport.write(b"".join(out))

    def flush_now(self) -> None:
        """Write what this loop turn queued now (e.g. once a batch of replies is written),
        not at the turn's end; the flush already scheduled then writes only what comes
        after this."""
        out = self._out
        if out and self._proto is not None and self._proto.transport is not None:
            self._out = []
            self._proto.transport.write(b"".join(out))

    # ------------------------------------------------------------------ reading
    def _feed(self, proto: _Proto, data: bytes) -> None:
        buf = proto.buf
        buf += data
        try:
            pos = self._parse(proto, buf)
        except (ValueError, IndexError) as e:  # not the NATS protocol: start again
            log.warning("%s: unreadable data from NATS (%r): reconnecting", self.name, e)
            buf.clear()
            if proto.transport is not None:
                proto.transport.abort()
            return
        del buf[:pos]
        for hook in self.after_read:
            try:
                hook()
            except Exception:  # noqa: BLE001 - one listener never stops the reader
                log.exception("%s: after_read callback failed", self.name)

    def _parse(self, proto: _Proto, buf: bytearray) -> int:
        """Hands every complete frame in ``buf`` on; returns how far it read."""
        if _frames is not None:
            return self._dispatch(proto, *_frames(buf, 0))
        return self._parse_python(proto, buf)

    def _dispatch(self, proto: _Proto, frames: list, pos: int) -> int:
        """The frames :func:`tipsml._hot.nats_frames` parsed, handed on in order."""
        subs = self._subs
        for f in frames:
            if type(f) is not tuple:
                self._control(proto, f)
                continue
            sub = subs.get(f[0])
            if sub is None:
                continue  # unsubscribed meanwhile
            hdr = f[3]
            try:
                sub.cb(FastMsg(self, f[1], f[2], f[4],
                               _parse_headers(hdr) if hdr is not None else None))
            except Exception:  # noqa: BLE001 - one bad message never stops the reader
                log.exception("%s: message callback failed", self.name)
        return pos

    def _parse_python(self, proto: _Proto, buf: bytearray) -> int:
        """:meth:`_parse` where the C part is not built."""
        pos, n = 0, len(buf)
        subs = self._subs
        while pos < n:
            eol = buf.find(_CRLF, pos)
            if eol < 0:
                break
            if buf.startswith(b"MSG ", pos) or buf.startswith(b"HMSG ", pos):
                parts = bytes(buf[pos:eol]).split()
                size = int(parts[-1])
                end = eol + 2 + size
                if end + 2 > n:
                    break  # the payload is not all here yet
                body = bytes(buf[eol + 2:end])
                pos = end + 2
                if parts[0] == b"HMSG":  # HMSG subject sid [reply] hdr_len total_len
                    hlen = int(parts[-2])
                    headers = _parse_headers(body[:hlen])
                    body = body[hlen:]
                    reply = parts[3].decode() if len(parts) == 6 else ""
                else:                    # MSG subject sid [reply] size
                    headers = None
                    reply = parts[3].decode() if len(parts) == 5 else ""
                sub = subs.get(int(parts[2]))
                if sub is None:
                    continue  # unsubscribed meanwhile
                try:
                    sub.cb(FastMsg(self, parts[1].decode(), reply, body, headers))
                except Exception:  # noqa: BLE001 - one bad message never stops the reader
                    log.exception("%s: message callback failed", self.name)
                continue
            line = bytes(buf[pos:eol])
            pos = eol + 2
            self._control(proto, line)
        return pos

    def _control(self, proto: _Proto, line: bytes) -> None:
        if line == b"PING":
            if proto.transport is not None:
                proto.transport.write(b"PONG\r\n")
        elif line == b"PONG":
            self._pings_out = 0
            if self._pong is not None and not self._pong.done():
                self._pong.set_result(True)
        elif line.startswith(b"INFO "):
            if self._info is not None and not self._info.done():
                try:
                    self._info.set_result(json.loads(line[5:]))
                except ValueError:
                    self._info.set_result({})
        elif line.startswith(b"-ERR"):
            self.last_error = line[5:].decode(errors="replace").strip(" '")
            log.warning("%s: NATS -ERR %s", self.name, self.last_error)
            if self._pong is not None and not self._pong.done() and self._ready is None:
                self._pong.set_result(False)  # refused during the handshake

    # ------------------------------------------------------------------ closing
    async def close(self) -> None:
        """Send what is written, then close (no reconnect after this)."""
        if self._closing:
            return
        self._flush_out()
        if self._proto is not None:
            await self.flush(1.0)
        self._closing = True
        for t in (self._pinger, self._reconnecting):
            if t is not None and not t.done():
                t.cancel()
        proto, self._proto, self._ready = self._proto, None, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
