"""Subject → scorer call. The request-reply mechanics (reply-subject check, parse, typed
error reply, latency and requests metrics, $SRV.STATS outcome) are the shared endpoint
helper's (:class:`tipsml.messaging.endpoint.Endpoint`); here only what each verb does."""

from __future__ import annotations

import asyncio
import logging

import orjson
import redis.exceptions

from tipsml import subjects as S
from tipsml.contract import (
    ContractError,
    ErrorCode,
    ResetRequest,
    ScoreRequest,
    StatsRequest,
    parse,
)
from tipsml.messaging.endpoint import Endpoint, EndpointMetrics
from tipsml.metrics import Children

log = logging.getLogger(__name__)

# the state store down (stats/reset cannot fall back): 'unavailable', not 'internal'
STORE_DOWN = [((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, TimeoutError),
               ErrorCode.unavailable, "state store unavailable: {name}")]


class Handlers:
    def __init__(self, scorer, writer, metrics, settings):
        self.scorer = scorer
        self.writer = writer
        self.m = metrics
        self.settings = settings
        # label children cached: the hot path does several lookups per decision
        self._decisions = Children(metrics.decisions)
        self._explored = Children(metrics.explored)
        self._agreement = Children(metrics.agreement)

    def endpoints(self) -> list[tuple[S.EndpointSpec, Endpoint]]:
        m = EndpointMetrics(self.m.latency, self.m.requests)
        spec = {e.name: e for e in S.SCORER_ENDPOINTS}
        return [
            (spec["score"], Endpoint(S.TIPS_SCORE, self.score, request=ScoreRequest, metrics=m,
                                     errors=STORE_DOWN,
                                     now=self.score_now if self.settings.sync_score else None)),
            (spec["stats"], Endpoint(S.TIPS_STATS, self.stats, request=StatsRequest, metrics=m,
                                     errors=STORE_DOWN)),
            # raw: the admin check comes before the payload is even parsed
            (spec["reset"], Endpoint(S.TIPS_RESET, self.reset, raw=True, metrics=m,
                                     errors=STORE_DOWN)),
        ]

    async def score(self, req: ScoreRequest, msg) -> bytes:
        self._count_profile(req)
        res = await self.scorer.score(req)
        self._count(res.reply)
        await self.writer.submit(res.record, res.log)  # waits only when the writer is behind
        return orjson.dumps(res.reply)

    def score_now(self, req: ScoreRequest, msg, reply) -> bool:
        """:meth:`score` without a task (the endpoint's synchronous path, issue 12): the
        reply (or the exception that becomes a typed error) goes to ``reply`` from the state
        read's callback. ``False`` when it must be awaited — the writer is behind (the reply
        waits for it: back-pressure) or the scorer needs an await first."""
        if self.writer.behind:
            return False

        def scored(res) -> None:
            if isinstance(res, Exception):
                reply(res)
                return
            try:
                self._count(res.reply)
                self.writer.submit_nowait(res.record, res.log)
                body = orjson.dumps(res.reply)
            except Exception as e:  # noqa: BLE001 - a typed reply, never a lost request
                reply(e)
                return
            reply(body)

        try:
            taken = self.scorer.score_cb(req, scored)
        except Exception:
            self._count_profile(req)
            raise
        if taken:  # the reply may be sent already: nothing after this may raise
            try:
                self._count_profile(req)
            except Exception:  # noqa: BLE001 - a metric never fails a served request
                log.exception("profile fallback metric failed")
        return taken

    def _count_profile(self, req: ScoreRequest) -> None:
        if req.profile_fallbacks:  # bad values use the feature's fallback, never an error
            for why in req.profile_fallbacks.values():
                self.m.profile_fallbacks.labels(why).inc()

    def _count(self, r: dict) -> None:
        self._decisions(r["policy"], r["arm"], "live").inc()
        if r["explored"]:
            self._explored(r["policy"]).inc()
        if r["fallback"]:
            self.m.fallbacks.labels("state_store").inc()
        for s in r["shadow"]:
            self._decisions(s["policy"], s["arm"], "shadow").inc()
            self._agreement(s["policy"], "true" if s["arm"] == r["arm"] else "false").inc()

    async def stats(self, req: StatsRequest, msg) -> bytes:
        return orjson.dumps(await asyncio.wait_for(self.scorer.stats(req.user_id, req.policy),
                                                   self.settings.admin_redis_timeout_s))

    async def reset(self, msg) -> bytes:
        token = self.settings.admin_token
        if token and (msg.headers or {}).get("Tips-Admin-Token") != token:
            raise ContractError(ErrorCode.forbidden, "tips.reset is admin only")
        req = parse(ResetRequest, msg.data)
        return orjson.dumps(await asyncio.wait_for(self.scorer.reset(req.user_id, req.policy),
                                                   self.settings.admin_redis_timeout_s))
