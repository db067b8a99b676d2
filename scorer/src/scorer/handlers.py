"""Subject → scorer call. The request-reply mechanics (reply-subject check, parse, typed
error reply, latency and requests metrics, $SRV.STATS outcome) are the shared endpoint
helper's (:class:`tipsml.messaging.endpoint.Endpoint`); here only what each verb does."""

from __future__ import annotations

import asyncio

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
                                     errors=STORE_DOWN)),
            (spec["stats"], Endpoint(S.TIPS_STATS, self.stats, request=StatsRequest, metrics=m,
                                     errors=STORE_DOWN)),
            # raw: the admin check comes before the payload is even parsed
            (spec["reset"], Endpoint(S.TIPS_RESET, self.reset, raw=True, metrics=m,
                                     errors=STORE_DOWN)),
        ]

    async def score(self, req: ScoreRequest, msg) -> bytes:
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
        return orjson.dumps(r)

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
