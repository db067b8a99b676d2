"""The typed async client: how a Python recommender calls the tips services.

    from tipsml.client import TipsClient, Unavailable

    async with await TipsClient.connect("nats://127.0.0.1:4222") as tips:
        d = await tips.score("user-1", context={"hour_of_day": 9, "day_of_week": 0})
        tip = await tips.generate("user-1", arm=d.arm, decision_id=d.decision_id)
        await tips.publish_feedback(d.decision_id, "user-1", reaction="completed")

* Replies are the contract's pydantic models (:mod:`tipsml.contract`: ``ScoreReply``,
  ``GenerateReply``, ...); fields a newer server adds are kept (``model_extra``).
* Failures raise :class:`TipsError` subclasses, one per contract code
  (:class:`InvalidRequest`, :class:`UnknownPolicy`, :class:`UnknownPromptVersion`,
  :class:`NotFound`, :class:`Forbidden`, :class:`Unavailable`, :class:`Timeout`,
  :class:`Internal`); a request that fails the contract's own validation is refused here,
  before it is sent, with :class:`InvalidRequest`.
* Each call has a timeout (per attempt; default per endpoint from
  ``tipsml.subjects.ENDPOINTS``, overridable per client and per call).
* Only ``unavailable`` and ``timeout`` are retried, at most ``retries`` times with
  exponential backoff; every other error is final. Retrying is safe: a ``tips.score``
  whose reply was lost leaves a decision nobody rewards (it expires), ``tips.reset`` and
  ``tips.stats`` are idempotent, and feedback carries ``Nats-Msg-Id = event_id`` so a
  re-published event is dropped by JetStream (and applied once by the consumer anyway).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Self, TypeVar

import nats
import nats.errors
from pydantic import BaseModel, ValidationError

from . import contract as C
from . import subjects as S

T = TypeVar("T", bound=BaseModel)
ADMIN_HEADER = "Tips-Admin-Token"


class TipsError(Exception):
    """A failed request: ``code`` is the contract's error code."""

    code = "internal"
    retryable = False

    def __init__(self, message: str, *, subject: str = "", code: str | None = None):
        super().__init__(f"{code or self.code}: {message}" + (f" ({subject})" if subject else ""))
        self.message = message
        self.subject = subject
        if code:
            self.code = code


class InvalidRequest(TipsError):
    code = "invalid_request"


class UnknownPolicy(TipsError):
    code = "unknown_policy"


class UnknownPromptVersion(TipsError):
    code = "unknown_prompt_version"


class NotFound(TipsError):
    code = "not_found"


class Forbidden(TipsError):
    code = "forbidden"


class Unavailable(TipsError):
    code = "unavailable"
    retryable = True


class Timeout(TipsError):
    code = "timeout"
    retryable = True


class Internal(TipsError):
    code = "internal"


ERRORS: dict[str, type[TipsError]] = {c.code: c for c in (
    InvalidRequest, UnknownPolicy, UnknownPromptVersion, NotFound, Forbidden, Unavailable,
    Timeout, Internal)}


def error_for(code: str, message: str, subject: str = "") -> TipsError:
    """The typed exception of a contract error (an unknown code is an :class:`Internal`
    carrying that code)."""
    cls = ERRORS.get(code)
    if cls is None:
        return Internal(message, subject=subject, code=code)
    return cls(message, subject=subject)


class Published(BaseModel):
    """JetStream's acknowledgement of a published event."""

    stream: str
    seq: int
    duplicate: bool = False
    event_id: str


_SPECS = {ep.subject: ep for ep in S.ENDPOINTS}


class TipsClient:
    """Typed calls over one NATS connection (see the module doc)."""

    def __init__(self, nc, *, admin_token: str | None = None, retries: int = 2,
                 backoff_s: float = 0.05, timeouts: dict[str, float] | None = None,
                 own_connection: bool = False):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.nc = nc
        self.js = nc.jetstream()
        self.admin_token = admin_token
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeouts = {ep.subject: ep.timeout_s for ep in S.ENDPOINTS}
        self.timeouts.update(timeouts or {})
        self._own = own_connection

    @classmethod
    async def connect(cls, servers: str | list[str] = "nats://127.0.0.1:4222", *,
                      admin_token: str | None = None, retries: int = 2,
                      timeouts: dict[str, float] | None = None, **nats_kwargs) -> TipsClient:
        nats_kwargs.setdefault("name", "tips-client")
        nc = await nats.connect(servers, **nats_kwargs)
        return cls(nc, admin_token=admin_token, retries=retries, timeouts=timeouts,
                   own_connection=True)

    async def close(self) -> None:
        if self._own and not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing
    @staticmethod
    def _build(model: type[T], fields: dict[str, Any]) -> T:
        try:
            return model.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as e:
            raise InvalidRequest(C.describe_validation_error(e),
                                 subject="(refused by the client)") from None

    async def _attempt(self, subject: str, data: bytes, timeout: float,
                       headers: dict | None) -> dict:
        try:
            msg = await self.nc.request(subject, data, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise Unavailable("no responders", subject=subject) from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise Timeout(f"no reply within {timeout:g} s", subject=subject) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                nats.errors.ConnectionDrainingError, nats.errors.OutboundBufferLimitError,
                nats.errors.StaleConnectionError) as e:
            raise Unavailable(f"NATS connection not usable: {type(e).__name__}",
                              subject=subject) from None
        try:
            body = json.loads(msg.data)
        except ValueError:
            raise Internal("reply is not JSON", subject=subject) from None
        if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
            raise Internal("reply has no boolean ok", subject=subject)
        if body["ok"] is False:
            err = body.get("error") or {}
            raise error_for(str(err.get("code", "internal")), str(err.get("message", "")),
                            subject)
        return body

    async def request(self, subject: str, req: BaseModel, reply_model: type[T], *,
                      timeout: float | None = None, admin: bool = False) -> T:
        """One endpoint call: bounded retries of ``unavailable``/``timeout`` only."""
        data = req.model_dump_json(exclude_none=True).encode()
        t = timeout if timeout is not None else self.timeouts.get(subject, 2.0)
        headers = {ADMIN_HEADER: self.admin_token} if admin and self.admin_token else None
        for attempt in range(self.retries + 1):
            try:
                body = await self._attempt(subject, data, t, headers)
                break
            except TipsError as e:
                if not e.retryable or attempt == self.retries:
                    raise
                await asyncio.sleep(self.backoff_s * (2 ** attempt))
        try:
            return reply_model.model_validate(body)
        except ValidationError as e:
            raise Internal(f"reply does not match {reply_model.__name__}: "
                           f"{C.describe_validation_error(e)}", subject=subject) from None

    # ------------------------------------------------------------------ tips.*
    async def score(self, user_id: str, *, policy: str | None = None,
                    arms: list[str] | None = None, context: dict | C.Context | None = None,
                    profile_features: dict | None = None, request_id: str | None = None,
                    timeout: float | None = None) -> C.ScoreReply:
        req = self._build(C.ScoreRequest, {"user_id": user_id, "policy": policy, "arms": arms,
                                               "context": context,
                                               "profile_features": profile_features,
                                               "request_id": request_id})
        return await self.request(S.TIPS_SCORE, req, C.ScoreReply, timeout=timeout)

    async def generate(self, user_id: str, *, arm: str | None = None,
                       context: dict | C.Context | None = None,
                       profile_features: dict | None = None, prompt_version: str | None = None,
                       model: str | None = None, decision_id: str | None = None,
                       request_id: str | None = None,
                       timeout: float | None = None) -> C.GenerateReply:
        req = self._build(C.GenerateRequest, {
            "user_id": user_id, "arm": arm, "context": context,
            "profile_features": profile_features,
            "prompt_version": prompt_version, "model": model, "decision_id": decision_id,
            "request_id": request_id})
        return await self.request(S.TIPS_GENERATE, req, C.GenerateReply, timeout=timeout)

    async def stats(self, user_id: str, *, policy: str | None = None,
                    timeout: float | None = None) -> C.StatsReply:
        req = self._build(C.StatsRequest, {"user_id": user_id, "policy": policy})
        return await self.request(S.TIPS_STATS, req, C.StatsReply, timeout=timeout)

    async def reset(self, user_id: str, *, policy: str | None = None,
                    timeout: float | None = None) -> C.ResetReply:
        req = self._build(C.ResetRequest, {"user_id": user_id, "policy": policy})
        return await self.request(S.TIPS_RESET, req, C.ResetReply, timeout=timeout, admin=True)

    # ------------------------------------------------------------------ bench.*
    async def leaderboard(self, experiment: str, *, job_id: str | None = None,
                          judge: str = "auto", timeout: float | None = None) -> C.LeaderboardReply:
        req = self._build(C.LeaderboardRequest, {"experiment": experiment, "job_id": job_id,
                                                     "judge": judge})
        return await self.request(S.BENCH_LEADERBOARD, req, C.LeaderboardReply,
                                  timeout=timeout, admin=True)

    async def experiments(self, *, limit: int = 100,
                          timeout: float | None = None) -> C.ExperimentsReply:
        req = self._build(C.ExperimentsRequest, {"limit": limit})
        return await self.request(S.BENCH_EXPERIMENTS, req, C.ExperimentsReply,
                                  timeout=timeout, admin=True)

    async def runs(self, experiment: str, *, job_id: str | None = None, kind: str = "cell",
                   limit: int = 200, timeout: float | None = None) -> C.RunsReply:
        req = self._build(C.RunsRequest, {"experiment": experiment, "job_id": job_id, "kind": kind,
                                              "limit": limit})
        return await self.request(S.BENCH_RUNS, req, C.RunsReply, timeout=timeout, admin=True)

    # ------------------------------------------------------------------ JetStream
    async def _publish(self, subject: str, data: bytes, event_id: str,
                       timeout: float) -> Published:
        headers = {"Nats-Msg-Id": event_id}
        for attempt in range(self.retries + 1):
            try:
                ack = await self.js.publish(subject, data, headers=headers, timeout=timeout)
                return Published(stream=ack.stream, seq=ack.seq,
                                 duplicate=bool(ack.duplicate), event_id=event_id)
            except nats.errors.NoRespondersError:
                err: TipsError = Unavailable("no JetStream stream answers", subject=subject)
            except (TimeoutError, nats.errors.TimeoutError):
                err = Timeout(f"no JetStream ack within {timeout:g} s", subject=subject)
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                    nats.errors.ConnectionDrainingError,
                    nats.errors.OutboundBufferLimitError) as e:
                err = Unavailable(f"NATS connection not usable: {type(e).__name__}",
                                  subject=subject)
            if attempt == self.retries:
                raise err
            await asyncio.sleep(self.backoff_s * (2 ** attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def publish_feedback(self, decision_id: str, user_id: str, *,
                               reaction: str | None = None, reward: float | None = None,
                               dwell_ms: float | None = None, event_id: str | None = None,
                               ts: float | None = None, prompt_version: str | None = None,
                               timeout: float = 2.0) -> Published:
        """A reaction (or an explicit reward in [0, 1]) to a decision, on ``feedback.<reaction>``
        with ``Nats-Msg-Id = event_id``. Pass your own stable ``event_id`` (e.g. the app's
        event id) so a re-sent event is recognised; a fresh one is made otherwise."""
        fb = self._build(C.Feedback, {
            "event_id": event_id or uuid.uuid4().hex, "decision_id": decision_id,
            "user_id": user_id,
            "reaction": reaction, "reward": reward, "dwell_ms": dwell_ms,
            "ts": ts if ts is not None else time.time(), "prompt_version": prompt_version})
        subject = f"feedback.{fb.reaction or 'reward'}"
        return await self._publish(subject, fb.model_dump_json(exclude_none=True).encode(),
                                   fb.event_id, timeout)

    async def publish_signal(self, user_id: str, kind: str, *, payload: dict | None = None,
                             event_id: str | None = None, ts: float | None = None,
                             timeout: float = 2.0) -> Published:
        """An app event (``kind`` like ``app.opened``) on ``signals.<kind>``."""
        sig = self._build(C.Signal, {"user_id": user_id, "kind": kind, "payload": payload,
                                         "ts": ts if ts is not None else time.time()})
        eid = event_id or uuid.uuid4().hex
        return await self._publish(f"signals.{kind}", sig.model_dump_json(
            exclude_none=True).encode(), eid, timeout)

    # ------------------------------------------------------------------ discovery
    async def services(self, verb: str = "INFO", name: str | None = None,
                       wait_s: float = 0.5) -> list[dict]:
        """Every instance's answer to ``$SRV.<verb>[.<name>]`` (NATS Services API), gathered
        for ``wait_s`` seconds."""
        return await discover(self.nc, verb, name, wait_s)


async def discover(nc, verb: str = "PING", name: str | None = None,
                   wait_s: float = 0.5) -> list[dict]:
    """Scatter-gather on ``$SRV.<verb>[.<name>]``: all answers within ``wait_s``."""
    if verb not in ("PING", "INFO", "STATS"):
        raise ValueError("verb is PING, INFO or STATS")
    inbox = nc.new_inbox()
    out: list[dict] = []

    async def cb(msg):
        try:
            out.append(json.loads(msg.data))
        except ValueError:
            pass

    sub = await nc.subscribe(inbox, cb=cb)
    try:
        await nc.publish(f"$SRV.{verb}" + (f".{name}" if name else ""), b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(wait_s)
    finally:
        await sub.unsubscribe()
    return out
