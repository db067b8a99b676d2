"""The request-reply endpoint helper: parse → handler → reply → metrics, once.

Every request-reply verb of every worker (``tips.score``, ``tips.generate``,
``bench.leaderboard``, …) is an :class:`Endpoint`::

    ep = Endpoint("tips.stats", stats, request=StatsRequest,
                  metrics=EndpointMetrics(m.latency, m.requests),
                  errors=[(redis.exceptions.ConnectionError, ErrorCode.unavailable,
                           "state store unavailable: {name}")])
    await service.add_request_endpoint("stats", "tips.stats", ep)

Per message, in this order:

1. the reply subject must be a requester's inbox (:func:`reply_is_inbox`); otherwise the
   request is refused unanswered (never acted on, never published onto a forged subject)
   and counted as ``refused_reply``;
2. ``request`` (a pydantic model, through :func:`tipsml.contract.parse`) or ``parse`` (any
   callable on the raw bytes, e.g. a fast parser) turns the payload into the request;
   ``raw=True`` hands the handler the message itself (it parses, reads headers, …);
3. the handler (``handler(request, msg)``, or ``handler(msg)`` when raw) returns the
   reply: ``bytes`` (sent as is: the fast path), a ``dict``
   (JSON-encoded) or a :class:`Reply` (body, extra latency labels, a callback run after
   the reply is sent);
4. any exception becomes a typed error reply, never a crash: :class:`ContractError` → its
   code, a pydantic ``ValidationError`` → ``invalid_request``, the endpoint's declared
   ``errors`` → their code, anything else → ``internal`` (logged with its traceback);
   error replies carry ADR-32's headers (:func:`tipsml.messaging.service.respond`);
5. metrics once: the latency histogram (labels: subject, then the handler's extra labels)
   and the requests counter by subject and outcome code; the outcome is returned for
   ``$SRV.STATS`` (:class:`tipsml.messaging.service.TipsService`).

An ``ok`` reply is ``msg.respond(body)``, nothing more: on the scorer's hot path the helper
costs what the hand-written block it replaces did (bench/service_overhead.py,
``--variant endpoint``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from ..contract import ContractError, ErrorCode, describe_validation_error, error_bytes, parse
from ..metrics import Children
from .connection import reply_is_inbox
from .service import OK, respond, respond_now

log = logging.getLogger(__name__)

REFUSED_REPLY = "refused_reply"


class Reply:
    """A handler's reply with what the helper needs besides the body."""

    __slots__ = ("after", "body", "labels")

    def __init__(self, body: bytes | dict, labels: tuple[str, ...] = (),
                 after: Callable[[], Any] | None = None):
        self.body = body
        self.labels = labels   # extra latency labels (after the subject)
        self.after = after     # called once the reply is sent (bookkeeping, metrics)


class EndpointMetrics:
    """The two metrics every endpoint keeps: a latency histogram whose first label is the
    subject, and an optional requests counter labelled (subject, code). ``refused`` (a
    counter labelled (subject, reason)) counts refused requests instead of ``requests``."""

    __slots__ = ("latency", "refused", "requests")

    def __init__(self, latency=None, requests=None, refused=None):
        self.latency = Children(latency) if latency is not None else None
        self.requests = Children(requests) if requests is not None else None
        self.refused = Children(refused) if refused is not None else None


ErrorMap = Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], ErrorCode, str]]


def dumps(obj) -> bytes:
    return orjson.dumps(obj)


class Endpoint:
    """One request-reply verb; an instance is the message handler (``await ep(msg)``)."""

    __slots__ = ("_error_labels", "_errors", "_latency", "_parse", "_requests", "handler",
                 "metrics", "now", "raw", "subject")

    def __init__(self, subject: str, handler: Callable[..., Awaitable[bytes | dict | Reply]], *,
                 request: type[BaseModel] | None = None,
                 parse_fn: Callable[[bytes], Any] | None = None, raw: bool = False,
                 metrics: EndpointMetrics | None = None, errors: ErrorMap = (),
                 error_labels: tuple[str, ...] = (),
                 now: Callable[[Any, Any, Callable[[bytes | Exception], None]], bool]
                 | None = None):
        if sum(x is not None and x is not False for x in (request, parse_fn, raw or None)) > 1:
            raise ValueError("give one of request, parse_fn, raw")
        self.subject = subject
        self.handler = handler
        self.raw = raw or (request is None and parse_fn is None)
        if now is not None and self.raw:
            raise ValueError("a synchronous handler (now) takes a parsed request")
        # ``now(request, msg, reply) -> bool``: serves the request without a task when it
        # can (``reply(body or exception)`` once, now or from a callback), else False; it
        # raises only before it replied (a raise becomes the typed error reply)
        self.now = now
        if request is not None:
            self._parse = lambda data, _m=request: parse(_m, data)
        else:
            self._parse = parse_fn
        self.metrics = metrics or EndpointMetrics()
        self._errors = tuple(errors)
        self._error_labels = error_labels  # latency labels of a reply that is an error
        m = self.metrics
        self._latency = m.latency
        self._requests = m.requests

    def _refuse(self, msg) -> str:
        m = self.metrics
        if m.refused is not None:
            m.refused(self.subject, REFUSED_REPLY).inc()
        elif m.requests is not None:
            m.requests(self.subject, REFUSED_REPLY).inc()
        log.warning("refused %s whose reply subject is not an inbox: %r", self.subject,
                    (msg.reply or "")[:80])
        return REFUSED_REPLY

    def _error(self, e: Exception) -> tuple[str, bytes]:
        if isinstance(e, ContractError):
            return e.code.value, error_bytes(e.code, e.message)
        if isinstance(e, ValidationError):
            return (ErrorCode.invalid_request.value,
                    error_bytes(ErrorCode.invalid_request, describe_validation_error(e)))
        for types, code, message in self._errors:
            if isinstance(e, types):
                return code.value, error_bytes(code, message.format(
                    name=type(e).__name__, subject=self.subject, error=str(e)[:300]))
        log.exception("internal error on %s", self.subject)
        return ErrorCode.internal.value, error_bytes(ErrorCode.internal, type(e).__name__)

    async def __call__(self, msg) -> str:
        if not reply_is_inbox(msg.reply):  # a forged reply subject: never act, never publish
            return self._refuse(msg)
        return await self._handle(msg, time.perf_counter())

    async def _handle(self, msg, t0: float, req=None) -> str:
        """:meth:`__call__` from the parse on (``req``: the request already parsed)."""
        code = OK
        labels: tuple[str, ...] = ()
        after = None
        try:
            if self.raw:
                out = await self.handler(msg)
            else:
                out = await self.handler(self._parse(msg.data) if req is None else req, msg)
            if type(out) is not bytes:  # noqa: E721 - the fast path is exactly bytes
                if isinstance(out, Reply):
                    labels, after = out.labels, out.after
                    out = out.body
                if isinstance(out, dict):
                    out = dumps(out)
        except Exception as e:  # noqa: BLE001 - every failure is a typed reply
            code, out = self._error(e)
            labels = self._error_labels
        if code is OK:  # the hot path: a plain reply
            try:
                await msg.respond(out)
            except Exception:  # noqa: BLE001 - connection gone: nothing to answer to
                code = "reply_failed"
        else:
            code = await respond(msg, out, code)  # error replies also get ADR-32 headers
        self._observe(t0, code, labels)
        if after is not None:
            after()
        return code  # the outcome, for $SRV.STATS

    def _observe(self, t0: float, code: str, labels: tuple[str, ...]) -> None:
        if self._latency is not None:
            self._latency(self.subject, *labels).observe(time.perf_counter() - t0)
        if self._requests is not None:
            self._requests(self.subject, code).inc()

    def start(self, msg, finished: Callable[[str], None]) -> Awaitable[str] | None:
        """The request served without a task where it can be (issue 12): an endpoint with
        a synchronous handler (``now``) on a connection that replies synchronously
        (``msg.respond_now``: :class:`tipsml.messaging.fastsub.FastMsg`). ``None`` once
        the request is taken: ``finished(outcome)`` is called when its reply is sent (in
        this call or from a later callback). Otherwise the awaitable that serves it as
        :meth:`__call__` does (the dispatcher runs it as a task): a request ``now``
        declines (it needs an await) is not parsed twice."""
        now = self.now
        if now is None or not hasattr(msg, "respond_now"):
            return self(msg)
        if not reply_is_inbox(msg.reply):
            finished(self._refuse(msg))
            return None
        t0 = time.perf_counter()
        try:
            req = self._parse(msg.data)
        except Exception as e:  # noqa: BLE001 - every failure is a typed reply
            self._reply_now(msg, t0, e, finished)
            return None
        try:
            if now(req, msg, lambda out: self._reply_now(msg, t0, out, finished)):
                return None
        except Exception as e:  # noqa: BLE001 - every failure is a typed reply
            self._reply_now(msg, t0, e, finished)
            return None
        return self._handle(msg, t0, req)

    def _reply_now(self, msg, t0: float, out: bytes | Exception,
                   finished: Callable[[str], None]) -> None:
        """The synchronous path's reply: ``out`` the body, or the exception that becomes a
        typed error reply; then the metrics, then ``finished``."""
        if type(out) is bytes:
            code, labels = OK, ()
            try:
                msg.respond_now(out)
            except Exception:  # noqa: BLE001 - connection gone: nothing to answer to
                code = "reply_failed"
        else:
            code, body = self._error(out)
            labels = self._error_labels
            code = respond_now(msg, body, code)
        self._observe(t0, code, labels)
        finished(code)


async def add_endpoints(service, endpoints: Sequence[tuple[Any, Endpoint]], *,
                        fast=None, fast_endpoints: Sequence[str] = ()) -> None:
    """Register each ``(spec, endpoint)`` (``spec``: a :class:`tipsml.subjects.EndpointSpec`)
    with the NATS Services API, so ``$SRV.PING/INFO/STATS`` find it; the endpoints named in
    ``fast_endpoints`` take their messages from ``fast`` (a
    :class:`tipsml.messaging.fastsub.FastConnection`) when it is given."""
    for spec, ep in endpoints:
        await service.add_request_endpoint(
            spec.name, spec.subject, ep, metadata=spec.metadata(),
            subscriber=fast if fast is not None and spec.name in fast_endpoints else None)
