"""NATS Services API (ADR-32) for the request-reply workers, on nats-py's ``nats.micro``.

Every request-reply worker registers one service (``tips-scorer``, ``tips-generator``,
``tips-bench``) with its endpoints, version and metadata, so any NATS client discovers
it: ``$SRV.PING``, ``$SRV.INFO``, ``$SRV.STATS`` (optionally ``.<name>[.<id>]``), or
``nats micro ls / info / stats``.

Why not ``Service.add_endpoint``: nats.micro's endpoint awaits the handler inside the
subscription callback, so one endpoint serves one request at a time (a slow Redis
call or an LLM cache miss would queue every request behind it), and it counts an
error only when the handler *raises* (then it answers with empty data and error
headers, not the contract's JSON error). Here the control subjects and the
INFO/STATS documents are nats.micro's (:class:`TipsService` subclasses its
``Service``); the endpoints are subscribed by :meth:`TipsService.add_request_endpoint`
with today's dispatch — a queue group, one task per message — and each handler
returns its outcome code, which the dispatcher records:

* ``num_requests`` / ``processing_time`` / ``average_processing_time``: every request,
  in nanoseconds from the message reaching the worker's callback to the end of its
  handler (the reply sent);
* ``num_errors`` / ``last_error``: every reply with ``"ok": false`` (whatever the code:
  a client's ``invalid_request`` counts like an ``internal``), plus replies that could
  not be sent; ``data.codes`` splits the count by contract error code so a client
  error and a server fault can be told apart.

Error replies also carry ADR-32's headers ``Nats-Service-Error`` (the message) and
``Nats-Service-Error-Code`` (an HTTP-like status, :data:`STATUS`); the body stays the
contract's ``{"ok": false, "error": {...}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata

from nats.micro.service import (
    EndpointInfo,
    EndpointStats,
    Service,
    ServiceConfig,
    ServiceInfo,
    ServiceStats,
)

from ..contract import ErrorCode

log = logging.getLogger(__name__)

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"

# contract error code -> the status ADR-32 puts in Nats-Service-Error-Code
STATUS: dict[str, str] = {
    ErrorCode.invalid_request.value: "400",
    ErrorCode.unknown_policy.value: "400",
    ErrorCode.unknown_prompt_version.value: "400",
    ErrorCode.forbidden.value: "403",
    ErrorCode.not_found.value: "404",
    ErrorCode.internal.value: "500",
    ErrorCode.unavailable.value: "503",
    ErrorCode.timeout.value: "504",
}

OK = "ok"
# A handler takes the message, answers it (see :func:`respond`) and returns its outcome:
# "ok" or the contract error code of its reply ("reply_failed" when the reply was lost).
RequestHandler = Callable[[object], Awaitable[str | None]]


def package_version(dist: str, default: str = "0.1.0") -> str:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return default


def error_headers(code: str, message: str) -> dict[str, str]:
    text = " ".join(str(message).split())[:256] or code
    return {ERROR_HEADER: f"{code}: {text}", ERROR_CODE_HEADER: STATUS.get(code, "500")}


async def respond(msg, body: bytes, code: str = OK) -> str:
    """Answer ``msg`` with ``body``; an error reply (``code`` not ``ok``) also carries the
    ADR-32 error headers. Returns ``code``, or ``reply_failed`` when the connection is gone.
    No reply subject (a plain publish): nothing to answer, the outcome stands."""
    if not msg.reply:
        return code
    try:
        if code == OK:
            await msg.respond(body)
        else:
            await msg._client.publish(msg.reply, body, headers=_error_headers_of(code, body))
    except Exception:  # noqa: BLE001 - connection gone: nothing to answer to
        return "reply_failed"
    return code


def respond_now(msg, body: bytes, code: str = OK) -> str:
    """:func:`respond` on a message that answers synchronously (``msg.respond_now``, the
    fast connection's :class:`tipsml.messaging.fastsub.FastMsg`)."""
    if not msg.reply:
        return code
    try:
        msg.respond_now(body, None if code == OK else _error_headers_of(code, body))
    except Exception:  # noqa: BLE001 - connection gone: nothing to answer to
        return "reply_failed"
    return code


def _error_headers_of(code: str, body: bytes) -> dict[str, str]:
    """ADR-32's headers for an error reply, the message read back from its body."""
    try:
        message = json.loads(body).get("error", {}).get("message", "")
    except (ValueError, AttributeError):
        message = ""
    return error_headers(code, message)


class EndpointCounters:
    """One endpoint's ADR-32 statistics, kept by the dispatcher."""

    __slots__ = (
        "codes",
        "last_error",
        "metadata",
        "name",
        "num_errors",
        "num_requests",
        "processing_time",
        "queue_group",
        "subject",
    )

    def __init__(self, name: str, subject: str, queue_group: str, metadata: dict[str, str]):
        self.name, self.subject, self.queue_group = name, subject, queue_group
        self.metadata = metadata
        self.reset()

    def reset(self) -> None:
        self.num_requests = 0
        self.num_errors = 0
        self.processing_time = 0
        self.last_error = ""
        self.codes: dict[str, int] = {}

    def record(self, elapsed_ns: int, code: str) -> None:
        self.num_requests += 1
        self.processing_time += elapsed_ns
        if code != OK:
            self.num_errors += 1
            self.last_error = code
            self.codes[code] = self.codes.get(code, 0) + 1

    def stats(self) -> EndpointStats:
        n = self.num_requests
        return EndpointStats(name=self.name, subject=self.subject, queue_group=self.queue_group,
                             num_requests=n, num_errors=self.num_errors,
                             processing_time=self.processing_time,
                             average_processing_time=self.processing_time // n if n else 0,
                             last_error=self.last_error, data={"codes": dict(self.codes)})

    def info(self) -> EndpointInfo:
        return EndpointInfo(name=self.name, subject=self.subject, queue_group=self.queue_group,
                            metadata=dict(self.metadata))


class TipsService(Service):
    """A nats.micro service whose endpoints keep the workers' dispatch (see module doc)."""

    def __init__(self, nc, *, name: str, version: str, description: str,
                 metadata: dict[str, str] | None = None, queue_group: str | None = None):
        super().__init__(nc, ServiceConfig(name=name, version=version, description=description,
                                           metadata={k: str(v) for k, v in
                                                     (metadata or {}).items()},
                                           queue_group=queue_group))
        self.counters: list[EndpointCounters] = []
        self.tasks: set[asyncio.Task] = set()
        self._untracked = 0  # requests in flight served without a task (Endpoint.start)
        self._idle_now: asyncio.Event | None = None  # set when _untracked falls to 0
        self._subs: list = []

    async def add_request_endpoint(self, name: str, subject: str, handler: RequestHandler, *,
                                   queue_group: str | None = None,
                                   metadata: dict[str, str] | None = None,
                                   subscriber=None) -> None:
        """Subscribe ``subject`` on the queue group; each message runs ``handler`` in its own
        task and its outcome is recorded for ``$SRV.STATS``. ``subscriber``: a connection
        of its own for this subject (:class:`tipsml.messaging.fastsub.FastConnection`,
        which calls the dispatcher synchronously) instead of the service's nats-py one."""
        qg = queue_group or self._queue_group or "q"
        ep = EndpointCounters(name, subject, qg, {k: str(v) for k, v in
                                                   (metadata or {}).items()})
        self.counters.append(ep)
        tasks = self.tasks
        clock = time.perf_counter_ns
        # the loop's own method: asyncio.create_task looks the loop up (a getpid() syscall)
        create_task = asyncio.get_running_loop().create_task

        def done(t: asyncio.Task, t0: int) -> None:
            tasks.discard(t)
            if t.cancelled() or t.exception() is not None:
                code = "internal"
            else:
                code = t.result() or OK
            ep.record(clock() - t0, code)

        def finished(code: str, t0: int) -> None:  # a request served without a task
            ep.record(clock() - t0, code or OK)
            self._untracked -= 1
            if not self._untracked and self._idle_now is not None:
                self._idle_now.set()

        # the fast connection's messages answer synchronously: an endpoint that can serve
        # them without a task does (Endpoint.start; issue 12)
        start = getattr(handler, "start", None) if subscriber is not None else None

        def dispatch(msg) -> None:
            # the handler itself is the task (no wrapper coroutine on the hot path); the
            # time counted runs from here, the message handed to the worker, to its reply
            t0 = clock()
            if start is not None:
                self._untracked += 1
                try:
                    job = start(msg, lambda code, t0=t0: finished(code, t0))
                except BaseException:
                    finished("internal", t0)
                    raise
                if job is None:
                    return
                self._untracked -= 1  # served by a task after all
            else:
                job = handler(msg)
            t = create_task(job)
            tasks.add(t)
            t.add_done_callback(lambda t, t0=t0: done(t, t0))

        async def cb(msg) -> None:  # nats-py wants a coroutine function
            dispatch(msg)

        if subscriber is not None:
            self._subs.append(await subscriber.subscribe(subject, queue=qg, cb=dispatch))
        else:
            self._subs.append(await self._client.subscribe(subject, queue=qg, cb=cb))

    # ---- the documents nats.micro's control handlers send ($SRV.INFO / $SRV.STATS)
    def info(self) -> ServiceInfo:
        return ServiceInfo(name=self._name, id=self._id, version=self._version,
                           description=self._description, metadata=self._metadata,
                           endpoints=[c.info() for c in self.counters])

    def stats(self) -> ServiceStats:
        return ServiceStats(name=self._name, id=self._id, version=self._version,
                            started=self._started, metadata=self._metadata,
                            endpoints=[c.stats() for c in self.counters])

    async def reset(self) -> None:
        for c in self.counters:
            c.reset()
        self._started = datetime.now(UTC).replace(tzinfo=None)

    # ---- shutdown in two steps: stop taking requests, let in-flight ones answer
    async def stop_endpoints(self) -> None:
        subs, self._subs = self._subs, []
        for s in subs:
            try:
                await s.unsubscribe()
            except Exception as e:  # noqa: BLE001 - connection already gone
                log.debug("endpoint unsubscribe failed: %r", e)

    async def wait_idle(self, timeout: float) -> None:
        """The requests in flight answered (tasks, and those served without one), within
        ``timeout``."""
        deadline = time.monotonic() + timeout
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout)
        if self._untracked:
            self._idle_now = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle_now.wait(),
                                       max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("%d requests still unanswered at shutdown", self._untracked)
            finally:
                self._idle_now = None

    async def stop(self) -> None:
        await self.stop_endpoints()
        try:
            await super().stop()
        except Exception as e:  # noqa: BLE001 - connection already gone
            log.debug("service control subjects not drained: %r", e)


async def start_service(nc, *, name: str, version: str, description: str,
                        metadata: dict[str, str] | None = None,
                        queue_group: str | None = None) -> TipsService:
    svc = TipsService(nc, name=name, version=version, description=description,
                      metadata=metadata, queue_group=queue_group)
    await svc.start()
    return svc
