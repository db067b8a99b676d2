"""The candidate cache: pre-generated tips per (user, arm, prompt version, model).

``tips:cand:{u}:{a}:{v}:{m}`` is a list of candidate tips (JSON), newest first, at most
``cache_max`` long, TTL ``cache_ttl_s``. :data:`TAKE_LUA` serves the newest and removes it
while more than one is left (the last one stays until a refresh replaces it, so a user
who asks faster than the refresh sees a repeat rather than a miss). A candidate whose
``prompt_hash`` is not the current hash of its version is not served (an edited prompt
never serves tips written by its old text); likewise one whose ``guard`` is not the
current :data:`tipsml.guard.GUARD_ID` (written under other rules).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from tipsml import guard as G
from tipsml.keys import cand_key, sig_key

log = logging.getLogger(__name__)

SIGNALS_KEPT = 20

# KEYS[1] candidate list. Returns {entry, remaining} or nil.
TAKE_LUA = r"""
local n = redis.call('LLEN', KEYS[1])
if n == 0 then return false end
if n > 1 then return {redis.call('LPOP', KEYS[1]), n - 1} end
return {redis.call('LINDEX', KEYS[1], 0), 1}
"""


class CandidateCache:
    def __init__(self, cfg, redis, metrics=None):
        self.cfg = cfg
        self.r = redis
        self.m = metrics
        self._take = redis.register_script(TAKE_LUA)

    async def take(self, user_id: str, arm: str, version: str,
                   model: str) -> tuple[dict | None, int, list]:
        """The request path's one pipelined round trip: take a candidate (when the cache
        is on) and read the user's recent signals. Returns (entry, remaining, signals);
        Redis trouble is a miss (``None, 0, []``), never an error."""
        entry, remaining, signals = None, 0, []
        try:
            pipe = self.r.pipeline(transaction=False)
            if self.cfg.cache_enabled:
                await self._take(keys=[cand_key(user_id, arm, version, model)], client=pipe)
            pipe.lrange(sig_key(user_id), 0, SIGNALS_KEPT - 1)
            res = await asyncio.wait_for(pipe.execute(), self.cfg.redis_timeout_s * 4)
            if self.cfg.cache_enabled:
                taken, raw_sigs = res
                if taken:
                    entry = json.loads(taken[0])
                    remaining = int(taken[1])
            else:
                raw_sigs = res[0]
            signals = [json.loads(s) for s in raw_sigs]
        except (TimeoutError, Exception) as e:  # noqa: BLE001 - Redis trouble = miss
            log.debug("cache read failed: %r", e)
            if self.m:
                self.m.redis_errors.labels("cache_read").inc()
        return entry, remaining, signals

    @staticmethod
    def servable(entry: dict | None, prompt_hash: str) -> bool:
        """Written by the current prompt text under the current guard rules."""
        return (entry is not None and entry.get("prompt_hash") == prompt_hash
                and bool(entry.get("tip")) and entry.get("guard") == G.GUARD_ID)

    async def size(self, user_id: str, arm: str, version: str, model: str) -> int:
        return await self.r.llen(cand_key(user_id, arm, version, model))

    async def put(self, user_id: str, arm: str, version: str, model: str, prompt_hash: str,
                  kept: list[G.Ranked]) -> None:
        """Push ``kept`` (best first) in front of the list, trimmed to ``cache_max``."""
        key = cand_key(user_id, arm, version, model)
        now = round(time.time(), 3)
        pipe = self.r.pipeline(transaction=True)
        for c in reversed(kept):  # the best ends up first (served first)
            pipe.lpush(key, json.dumps(
                {"tip": c.text, "model": model, "prompt_hash": prompt_hash,
                 "guard": G.GUARD_ID, "score": c.score, "overlong": c.overlong, "ts": now}))
        pipe.ltrim(key, 0, self.cfg.cache_max - 1)
        pipe.expire(key, self.cfg.cache_ttl_s)
        await pipe.execute()
