"""Scoring logic of ``tips.score`` / ``tips.stats`` / ``tips.reset`` (no NATS here).

``Scorer.score`` does exactly one pipelined Redis round trip (the live policy's and
every shadow policy's arm models), computes the choice with numpy, and returns the
reply plus the records to write *after* replying: the decision record (Redis, for the
reward join) and the DECISIONS log entries (JetStream, for off-policy evaluation).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import numpy as np

from .bandits import Policy, build_policies
from .contract import ContractError, ErrorCode, ScoreRequest
from .features import build_vector, resolve_time
from .state import StateStore, pulls_key, state_key


@dataclass
class ScoreOutcome:
    reply: dict
    record: dict | None  # decision record for Redis (None on fallback)
    log: list[dict]      # DECISIONS entries (served + shadow)


class Scorer:
    def __init__(self, settings, store: StateStore, rng: np.random.Generator | None = None):
        self.settings = settings
        self.store = store
        self.policies: dict[str, Policy] = build_policies(settings)
        for p in [settings.default_policy, *settings.shadow_policies]:
            if p not in self.policies:
                raise ValueError(f"configured policy {p!r} is not one of {sorted(self.policies)}")
        self.arms = list(settings.arms)
        self.rng = rng or np.random.default_rng()
        self.redis_timeout_s = getattr(settings, "redis_timeout_s", 0.025)
        self.breaker_s = getattr(settings, "redis_breaker_s", 0.5)
        self.breaker_failures = getattr(settings, "redis_breaker_failures", 3)
        self._down_until = 0.0
        self._failures = 0

    def policy(self, name: str | None) -> Policy:
        name = name or self.settings.default_policy
        p = self.policies.get(name)
        if p is None:
            raise ContractError(ErrorCode.unknown_policy,
                                f"unknown policy {name!r}; known: {', '.join(sorted(self.policies))}")
        return p

    async def _load(self, keys, arms):
        """One pipelined read with a deadline; a breaker opens after consecutive failures
        so an unavailable Redis costs nothing per request until the next probe."""
        if time.monotonic() < self._down_until:
            raise ConnectionError("redis circuit open")
        try:
            out = await asyncio.wait_for(self.store.load_many(keys, arms), self.redis_timeout_s)
        except (Exception, asyncio.TimeoutError):
            self._failures += 1
            if self._failures >= self.breaker_failures:
                self._down_until = time.monotonic() + self.breaker_s
                self._failures = 0
            raise
        self._failures = 0
        return out

    async def score(self, req: ScoreRequest) -> ScoreOutcome:
        live = self.policy(req.policy)
        arms = req.arms or self.arms
        shadows = [self.policies[s] for s in self.settings.shadow_policies if s != live.name]
        pols = [live, *shadows]
        skeys = [state_key(p.name, req.user_id, p.global_model) for p in pols]
        ts = time.time()
        decision_id = uuid.uuid4().hex
        hour, dow = resolve_time(req.context)
        xs = {p.name: build_vector(p.features, req.context, req.profile_features) for p in pols}
        try:
            blobs = await self._load(skeys, arms)
        except (Exception, asyncio.TimeoutError) as e:  # Redis down/slow: safe uniform fallback
            return self._fallback(req, live, arms, decision_id, ts, repr(e)[:200])
        choices = [p.choose(arms, b, xs[p.name], self.rng) for p, b in zip(pols, blobs)]
        c = choices[0]
        reply = {
            "ok": True, "decision_id": decision_id, "policy": live.name,
            "policy_version": live.version, "arm": c.arm, "propensity": c.propensity,
            "explored": c.explored, "scores": c.scores, "feature_version": live.features.version,
            "shadow": [{"policy": p.name, "arm": ch.arm, "propensity": ch.propensity}
                       for p, ch in zip(shadows, choices[1:])],
            "fallback": False,
        }
        if req.request_id:
            reply["request_id"] = req.request_id
        learners = [live.name]
        if getattr(self.settings, "shadow_learn", True):
            learners += [p.name for p in shadows]
        record = {
            "decision_id": decision_id, "user_id": req.user_id, "arm": c.arm,
            "policy": live.name, "policy_version": live.version, "propensity": c.propensity,
            "ts": ts, "learners": learners,
            "vectors": {p.name: (k, xs[p.name]) for p, k in zip(pols, skeys) if p.name in learners},
            "pulls_key": pulls_key(live.name, req.user_id, live.global_model),
            "hyper": {p.name: p.update_id for p in pols if p.name in learners},
        }
        log = []
        for i, (p, ch) in enumerate(zip(pols, choices)):
            log.append({
                "decision_id": decision_id, "user_id": req.user_id, "policy": p.name,
                "policy_version": p.version, "served": i == 0, "live_policy": live.name,
                "arm": ch.arm, "propensity": ch.propensity, "explored": ch.explored,
                "arms": arms, "scores": ch.scores, "features": xs[p.name].tolist(),
                "feature_version": p.features.version, "hour_of_day": hour, "day_of_week": dow,
                "served_arm": c.arm, "ts": ts, "request_id": req.request_id,
            })
        return ScoreOutcome(reply, record, log)

    def _fallback(self, req, live, arms, decision_id, ts, reason) -> ScoreOutcome:
        arm = arms[int(self.rng.integers(len(arms)))]
        p = 1.0 / len(arms)
        reply = {
            "ok": True, "decision_id": decision_id, "policy": live.name,
            "policy_version": live.version + "+fallback", "arm": arm, "propensity": p,
            "explored": True, "scores": {a: 0.0 for a in arms},
            "feature_version": live.features.version, "shadow": [], "fallback": True,
            "fallback_reason": "state store unavailable",
        }
        if req.request_id:
            reply["request_id"] = req.request_id
        log = [{
            "decision_id": decision_id, "user_id": req.user_id, "policy": live.name,
            "policy_version": reply["policy_version"], "served": True, "live_policy": live.name,
            "arm": arm, "propensity": p, "explored": True, "arms": arms, "scores": reply["scores"],
            "features": None, "feature_version": live.features.version, "served_arm": arm,
            "ts": ts, "request_id": req.request_id, "fallback": True, "fallback_detail": reason,
        }]
        return ScoreOutcome(reply, None, log)

    async def stats(self, user_id: str, policy: str | None) -> dict:
        pols = [self.policy(policy)] if policy else [self.policy(None)]
        out = {}
        for p in pols:
            arms = await self.store.stats(p.name, user_id, p.global_model, p.dim)
            out[p.name] = {"global_model": p.global_model, "version": p.version, "arms": arms}
        first = out[pols[0].name]
        return {"ok": True, "user_id": user_id, "policy": pols[0].name,
                "arms": first["arms"], "policies": out}

    async def reset(self, user_id: str, policy: str | None) -> dict:
        pols = [self.policy(policy)] if policy else list(self.policies.values())
        per_user = [p.name for p in pols if not p.global_model]
        deleted = await self.store.reset(per_user, user_id)
        return {"ok": True, "user_id": user_id, "reset_policies": per_user,
                "skipped_global": [p.name for p in pols if p.global_model], "keys_deleted": deleted}
