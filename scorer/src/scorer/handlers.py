"""Subject → shared-library call. Every path ends in exactly one reply."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

import redis.exceptions

from tipsml.metrics import Children
from tipsml.contract import (ContractError, ErrorCode, ResetRequest, ScoreRequest, StatsRequest,
                             error_bytes, parse)
from tipsml.natsutil import reply_is_inbox
from tipsml.service import respond

log = logging.getLogger(__name__)


def _dumps(obj) -> bytes:
    return orjson.dumps(obj)


class Handlers:
    def __init__(self, scorer, writer, metrics, settings):
        self.scorer = scorer
        self.writer = writer
        self.m = metrics
        self.settings = settings
        # label children cached: the hot path does several lookups per decision
        self._latency = Children(metrics.latency)
        self._requests = Children(metrics.requests)
        self._decisions = Children(metrics.decisions)
        self._explored = Children(metrics.explored)
        self._agreement = Children(metrics.agreement)

    async def _respond(self, msg, subject: str, fn) -> str:
        if not reply_is_inbox(msg.reply):  # a forged reply subject: never act, never publish
            self._requests(subject, "refused_reply").inc()
            log.warning("refused %s whose reply subject is not an inbox: %r", subject,
                        (msg.reply or "")[:80])
            return "refused_reply"
        t0 = time.perf_counter()
        code = "ok"
        try:
            out = await fn(msg)
        except ContractError as e:
            code = e.code.value
            out = error_bytes(e.code, e.message)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                asyncio.TimeoutError) as e:  # state store down (stats/reset cannot fall back)
            code = "unavailable"
            out = error_bytes(ErrorCode.unavailable, f"state store unavailable: {type(e).__name__}")
        except Exception as e:  # noqa: BLE001 - the worker keeps serving
            log.exception("internal error on %s", subject)
            code = "internal"
            out = error_bytes(ErrorCode.internal, f"{type(e).__name__}")
        if code == "ok" and msg.reply:  # the hot path: a plain reply, as before
            try:
                await msg.respond(out)
            except Exception:  # noqa: BLE001 - connection gone: nothing to answer to
                code = "reply_failed"
        else:
            code = await respond(msg, out, code)  # error replies also get ADR-32 headers
        self._latency(subject).observe(time.perf_counter() - t0)
        self._requests(subject, code).inc()
        return code  # the outcome, for $SRV.STATS (tipsml.service)

    async def score(self, msg) -> str:
        return await self._respond(msg, "tips.score", self._score)

    async def _score(self, msg) -> bytes:
        req = parse(ScoreRequest, msg.data)
        if req.profile_fallbacks:  # bad values use the feature's fallback, never an error
            for why in req.profile_fallbacks.values():
                self.m.profile_fallbacks.labels(why).inc()
        res = await self.scorer.score(req)
        r = res.reply
        self._decisions(r["policy"], r["arm"], "live").inc()
        if r["explored"]:
            self._explored(r["policy"]).inc()
        if r["fallback"]:
            self.m.fallbacks.labels("state_store").inc()
        for s in r["shadow"]:
            self._decisions(s["policy"], s["arm"], "shadow").inc()
            self._agreement(s["policy"], "true" if s["arm"] == r["arm"] else "false").inc()
        await self.writer.submit(res.record, res.log)  # waits only when the writer is behind
        return _dumps(r)

    async def stats(self, msg) -> str:
        return await self._respond(msg, "tips.stats", self._stats)

    async def _stats(self, msg) -> bytes:
        req = parse(StatsRequest, msg.data)
        return _dumps(await asyncio.wait_for(self.scorer.stats(req.user_id, req.policy),
                                             self.settings.admin_redis_timeout_s))

    async def reset(self, msg) -> str:
        return await self._respond(msg, "tips.reset", self._reset)

    async def _reset(self, msg) -> bytes:
        token = self.settings.admin_token
        if token and (msg.headers or {}).get("Tips-Admin-Token") != token:
            raise ContractError(ErrorCode.forbidden, "tips.reset is admin only")
        req = parse(ResetRequest, msg.data)
        return _dumps(await asyncio.wait_for(self.scorer.reset(req.user_id, req.policy),
                                             self.settings.admin_redis_timeout_s))
