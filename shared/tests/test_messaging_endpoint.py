"""The request-reply endpoint helper (tipsml.messaging.endpoint): every outcome is one
typed reply (never a crash), counted once by code, with ADR-32 error headers (pure
logic: a recording message, real prometheus metrics)."""

from __future__ import annotations

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import BaseModel

from tipsml.contract import ContractError, ErrorCode, StatsRequest
from tipsml.messaging.endpoint import Endpoint, EndpointMetrics, Reply
from tipsml.messaging.service import ERROR_CODE_HEADER, ERROR_HEADER


class Client:
    def __init__(self):
        self.published = []

    async def publish(self, subject, body, headers=None):
        self.published.append((subject, body, headers))


class Msg:
    def __init__(self, data: bytes, reply: str | None = "_INBOX.abc", headers=None):
        self.data, self.reply, self.headers = data, reply, headers
        self._client = Client()
        self.replies: list[bytes] = []

    async def respond(self, body: bytes):
        self.replies.append(body)

    def answer(self) -> tuple[dict, dict | None]:
        """(body, headers) of the one reply this message got."""
        sent = [(b, None) for b in self.replies] + [(b, h) for _, b, h in
                                                    self._client.published]
        assert len(sent) == 1, sent
        return json.loads(sent[0][0]), sent[0][1]


@pytest.fixture
def metrics():
    r = CollectorRegistry()
    lat = Histogram("t_latency_seconds", "", ["subject", "source"], registry=r)
    req = Counter("t_requests_total", "", ["subject", "code"], registry=r)
    return r, EndpointMetrics(lat, req)


def count(r, code: str) -> float:
    return r.get_sample_value("t_requests_total", {"subject": "t.x", "code": code}) or 0.0


class Echo(BaseModel):
    user_id: str


async def test_ok_reply_parsed_request_and_after_callback(metrics):
    r, m = metrics
    after: list[str] = []

    async def handler(req: Echo, msg) -> Reply:
        return Reply({"ok": True, "user": req.user_id}, ("cache",), lambda: after.append("x"))

    ep = Endpoint("t.x", handler, request=Echo, metrics=m, error_labels=("none",))
    msg = Msg(b'{"user_id":"u1"}')
    assert await ep(msg) == "ok"
    body, headers = msg.answer()
    assert body == {"ok": True, "user": "u1"} and headers is None
    assert count(r, "ok") == 1 and after == ["x"]
    assert r.get_sample_value("t_latency_seconds_count",
                              {"subject": "t.x", "source": "cache"}) == 1


@pytest.mark.parametrize("exc,code,status", [
    (ContractError(ErrorCode.unknown_policy, "no such policy"), "unknown_policy", "400"),
    (ContractError(ErrorCode.forbidden, "admin only"), "forbidden", "403"),
    (ConnectionError("redis gone"), "unavailable", "503"),
    (KeyError("bug"), "internal", "500"),
])
async def test_failures_become_typed_replies(metrics, exc, code, status):
    r, m = metrics

    async def handler(req, msg):
        raise exc

    ep = Endpoint("t.x", handler, request=Echo, metrics=m, error_labels=("none",),
                  errors=[(ConnectionError, ErrorCode.unavailable, "store down: {name}")])
    msg = Msg(b'{"user_id":"u1"}')
    assert await ep(msg) == code
    body, headers = msg.answer()
    assert body["ok"] is False and body["error"]["code"] == code
    assert headers[ERROR_CODE_HEADER] == status and headers[ERROR_HEADER].startswith(code)
    if code == "unavailable":
        assert body["error"]["message"] == "store down: ConnectionError"
    if code == "internal":
        assert body["error"]["message"] == "KeyError"  # no internals leak
    assert count(r, code) == 1 and count(r, "ok") == 0
    assert r.get_sample_value("t_latency_seconds_count",
                              {"subject": "t.x", "source": "none"}) == 1


@pytest.mark.parametrize("data", [b"", b"{", b'{"user_id": 3}', b"[]", b'{"x":1}'])
async def test_invalid_payload_is_invalid_request(metrics, data):
    r, m = metrics
    called = []

    async def handler(req, msg):
        called.append(req)
        return b"{}"

    ep = Endpoint("t.x", handler, request=StatsRequest if data == b'{"x":1}' else Echo,
                  metrics=m, error_labels=("none",))
    msg = Msg(data)
    assert await ep(msg) == "invalid_request"
    assert msg.answer()[0]["error"]["code"] == "invalid_request"
    assert called == [] and count(r, "invalid_request") == 1


async def test_handler_validation_error_is_invalid_request(metrics):
    r, m = metrics

    async def handler(msg):
        return Echo.model_validate({"user_id": None})  # raises ValidationError

    ep = Endpoint("t.x", handler, raw=True, metrics=m, error_labels=("none",))
    msg = Msg(b"{}")
    assert await ep(msg) == "invalid_request"
    assert "user_id" in msg.answer()[0]["error"]["message"]


@pytest.mark.parametrize("reply", [None, "", "tips.reset", "$JS.ACK.X.y.1.1.1.1.1"])
async def test_forged_reply_subject_is_refused_unanswered(metrics, reply):
    r, m = metrics
    called = []

    async def handler(msg):
        called.append(msg)
        return b"{}"

    msg = Msg(b"{}", reply=reply)
    assert await Endpoint("t.x", handler, raw=True, metrics=m)(msg) == "refused_reply"
    assert called == [] and msg.replies == [] and msg._client.published == []
    assert count(r, "refused_reply") == 1


async def test_lost_reply_is_counted_not_raised(metrics):
    r, m = metrics

    class Gone(Msg):
        async def respond(self, body):
            raise ConnectionError("closed")

    async def handler(msg):
        return Reply(b"{}", ("cache",))

    assert await Endpoint("t.x", handler, raw=True, metrics=m,
                          error_labels=("none",))(Gone(b"{}")) == "reply_failed"
    assert count(r, "reply_failed") == 1


def test_one_way_to_parse():
    async def h(msg):
        return b""

    with pytest.raises(ValueError):
        Endpoint("t.x", h, request=Echo, raw=True)


# ---- the synchronous path (Endpoint.start; issue 12): the same outcomes without a task


@pytest.fixture
def metrics1():
    """The scorer's shape: latency labelled by subject only."""
    r = CollectorRegistry()
    lat = Histogram("t_latency_seconds", "", ["subject"], registry=r)
    req = Counter("t_requests_total", "", ["subject", "code"], registry=r)
    return r, EndpointMetrics(lat, req)


class NowMsg(Msg):
    """A message that answers synchronously, as the fast connection's FastMsg does."""

    def respond_now(self, body: bytes, headers=None):
        if headers is None:
            self.replies.append(body)
        else:
            self._client.published.append((self.reply, body, headers))


async def _serve_now(ep: Endpoint, msg) -> tuple[str | None, bool]:
    """(outcome, taken): start the request, run any task it hands back, then let the
    callbacks the handler scheduled run."""
    finished: list[str] = []
    job = ep.start(msg, finished.append)
    if job is not None:
        return await job, False
    for _ in range(5):
        if finished:
            break
        await asyncio.sleep(0)
    assert len(finished) == 1, finished
    return finished[0], True


@pytest.mark.parametrize("later", [False, True])
async def test_now_serves_without_a_task(metrics1, later):
    r, m = metrics1
    loop = asyncio.get_running_loop()

    async def handler(req, msg):  # never called on this path
        raise AssertionError("the task path ran")

    def now(req: Echo, msg, reply) -> bool:
        body = json.dumps({"ok": True, "user": req.user_id}).encode()
        if later:  # from a callback, as the scorer's Redis read answers
            loop.call_soon(reply, body)
        else:
            reply(body)
        return True

    ep = Endpoint("t.x", handler, request=Echo, metrics=m, now=now)
    msg = NowMsg(b'{"user_id":"u1"}')
    assert await _serve_now(ep, msg) == ("ok", True)
    assert msg.answer() == ({"ok": True, "user": "u1"}, None)
    assert count(r, "ok") == 1
    assert r.get_sample_value("t_latency_seconds_count", {"subject": "t.x"}) == 1


async def test_now_declining_runs_the_task_without_parsing_twice(metrics1):
    r, m = metrics1
    parsed: list[bytes] = []

    def parse_fn(data: bytes) -> Echo:
        parsed.append(data)
        return Echo.model_validate_json(data)

    async def handler(req: Echo, msg) -> bytes:
        return json.dumps({"ok": True, "via": "task", "user": req.user_id}).encode()

    ep = Endpoint("t.x", handler, parse_fn=parse_fn, metrics=m, now=lambda req, msg, reply: False)
    msg = NowMsg(b'{"user_id":"u2"}')
    assert await _serve_now(ep, msg) == ("ok", False)
    assert msg.answer()[0] == {"ok": True, "via": "task", "user": "u2"}
    assert parsed == [b'{"user_id":"u2"}'] and count(r, "ok") == 1


async def test_a_message_that_cannot_answer_synchronously_takes_the_task(metrics1):
    r, m = metrics1

    async def handler(req: Echo, msg) -> bytes:
        return b'{"ok": true}'

    def now(req, msg, reply):
        raise AssertionError("no respond_now: the synchronous path must not run")

    msg = Msg(b'{"user_id":"u3"}')  # nats-py's Msg shape: respond is a coroutine
    assert await _serve_now(Endpoint("t.x", handler, request=Echo, metrics=m, now=now),
                            msg) == ("ok", False)
    assert msg.answer()[0] == {"ok": True}


@pytest.mark.parametrize("how", ["raises", "replies"])
@pytest.mark.parametrize("exc,code,status", [
    (ContractError(ErrorCode.unknown_policy, "no such policy"), "unknown_policy", "400"),
    (ConnectionError("redis gone"), "unavailable", "503"),
    (KeyError("bug"), "internal", "500"),
])
async def test_now_failures_become_typed_replies(metrics, how, exc, code, status):
    r, m = metrics
    loop = asyncio.get_running_loop()

    async def handler(req, msg):
        raise AssertionError("the task path ran")

    def now(req, msg, reply) -> bool:
        if how == "raises":
            raise exc
        loop.call_soon(reply, exc)  # the failure reached from a callback
        return True

    ep = Endpoint("t.x", handler, request=Echo, metrics=m, error_labels=("none",),
                  errors=[(ConnectionError, ErrorCode.unavailable, "store down: {name}")],
                  now=now)
    msg = NowMsg(b'{"user_id":"u1"}')
    assert await _serve_now(ep, msg) == (code, True)
    body, headers = msg.answer()
    assert body["ok"] is False and body["error"]["code"] == code
    assert headers[ERROR_CODE_HEADER] == status and headers[ERROR_HEADER].startswith(code)
    assert count(r, code) == 1 and count(r, "ok") == 0
    assert r.get_sample_value("t_latency_seconds_count",
                              {"subject": "t.x", "source": "none"}) == 1


def _recording(called: list):
    """A handler and a synchronous handler that only note they were called."""
    async def handler(req, msg):
        called.append(req)
        return b"{}"

    def now(req, msg, reply):
        called.append(req)
        return True

    return handler, now


@pytest.mark.parametrize("data", [b"", b"{", b'{"user_id": 3}', b"[]"])
async def test_now_invalid_payload_is_invalid_request(metrics, data):
    r, m = metrics
    called: list = []
    handler, now = _recording(called)
    msg = NowMsg(data)
    ep = Endpoint("t.x", handler, request=Echo, metrics=m, error_labels=("none",), now=now)
    assert await _serve_now(ep, msg) == ("invalid_request", True)
    body, headers = msg.answer()
    assert body["error"]["code"] == "invalid_request" and headers[ERROR_CODE_HEADER] == "400"
    assert called == [] and count(r, "invalid_request") == 1


@pytest.mark.parametrize("reply", [None, "", "tips.reset", "_INBOX_X.*"])
async def test_now_forged_reply_subject_is_refused_unanswered(metrics, reply):
    r, m = metrics
    called: list = []
    handler, now = _recording(called)
    msg = NowMsg(b'{"user_id":"u1"}', reply=reply)
    ep = Endpoint("t.x", handler, request=Echo, metrics=m, now=now)
    assert await _serve_now(ep, msg) == ("refused_reply", True)
    assert called == [] and msg.replies == [] and msg._client.published == []
    assert count(r, "refused_reply") == 1


async def test_now_lost_reply_is_counted_not_raised(metrics1):
    r, m = metrics1

    class Gone(NowMsg):
        def respond_now(self, body, headers=None):
            raise ConnectionError("closed")

    async def handler(req, msg):
        return b"{}"

    ep = Endpoint("t.x", handler, request=Echo, metrics=m,
                  now=lambda req, msg, reply: reply(b"{}") or True)
    assert await _serve_now(ep, Gone(b'{"user_id":"u1"}')) == ("reply_failed", True)
    assert count(r, "reply_failed") == 1


def test_now_needs_a_parsed_request():
    async def h(msg):
        return b""

    with pytest.raises(ValueError):
        Endpoint("t.x", h, raw=True, now=lambda req, msg, reply: True)
