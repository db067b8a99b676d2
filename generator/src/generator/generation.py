"""Tip generation logic of ``tips.generate`` and the ``signals.>`` refresh (no NATS here).

Redis keys (``{u}`` user, ``{a}`` arm, ``{v}`` prompt version, ``{m}`` model string):

* ``tips:cand:{u}:{a}:{v}:{m}`` list of candidate tips (JSON), newest first, at most
  ``cache_max`` long, TTL ``cache_ttl_s``. :data:`TAKE_LUA` serves the newest and removes
  it while more than one is left (the last one stays until a refresh replaces it, so a
  user who asks faster than the refresh sees a repeat rather than a miss).
  A candidate whose ``prompt_hash`` is not the current hash of its version is ignored:
  an edited prompt never serves tips written by its old text; likewise a candidate whose
  ``guard`` is not the current :data:`tipsml.guard.GUARD_ID` (written under other rules).
* ``tips:genctx:{u}`` the user's last request context + profile features (JSON), used
  by the refresh; ``tips:sig:{u}`` the user's recent signal kinds (list, bounded);
  ``tips:gencombo:{u}`` set of ``version\\x1fmodel`` pairs the user was served (the
  refresh keeps those warm); ``tips:genlock:...`` refresh throttles (SET NX EX).
* ``tips:gen:{u}:{decision_id}`` (user hash tag, :func:`tipsml.state.generation_key`) hash
  ``prompt_version``, ``prompt_hash``, ``arm``, ``source``,
  ``model``, ``user_id``, ``ts`` — written when a request carries ``decision_id`` so the
  feedback consumer can attribute a reaction to a prompt version; TTL = reward window.
* ``tips:exposures`` Redis stream (approximately capped): one entry per tip served, with
  user, version, hash, experiment, arm, source, model, decision id.
* ``tips:pv:served`` hash version → tips served (a durable twin of the Prometheus counter).

The request path is one pipelined Redis round trip on a cache hit (take + recent
signals), the reply, then the bookkeeping writes in the background.

:class:`Generator` puts the pieces together, each testable alone: the candidate cache
(:mod:`generator.cache`), the LLM call and screening (:mod:`generator.screening`), the
refresh and refill in the background (:mod:`generator.refresh`), the signals
(:mod:`generator.signals`) and the curated fallback (:mod:`tipsml.fallbacks`). What
stays here: choosing arm, prompt version and model, the request path, the bookkeeping.

Every generated candidate goes through the guard (:mod:`tipsml.guard`) before it is
cached or served; a refresh generates ``candidates`` per (arm, version, model), keeps
the best ``keep`` that pass (ranked by :meth:`tipsml.guard.Bound.score`), and a request
whose LLM answer is rejected gets a tip of the curated fallback library
(:mod:`tipsml.fallbacks`), itself guarded.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tipsml import fallbacks, prompts
from tipsml import guard as G
from tipsml import keys as K
from tipsml.context import assemble
from tipsml.contract import ContractError, ErrorCode, GenerateRequest, Signal
from tipsml.keys import (  # noqa: F401
    EXPOSURES_STREAM,
    PV_SERVED_KEY,
    cand_key,
    combo_key,
    ctx_key,
)
from tipsml.llm import LLMClient

from .cache import SIGNALS_KEPT, TAKE_LUA, CandidateCache  # noqa: F401
from .refresh import Refresher, RefreshResult, TransientError  # noqa: F401
from .screening import BELOW_BAR, Screened, TipWriter, screen, select  # noqa: F401
from .signals import SignalProcessor

GENERAL_ARM = "general"
ARM_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def gen_key(decision_id: str, user_id: str) -> str:
    # in the user's hash slot: the reward script reads it with the user's other keys
    return K.generation_key(decision_id, user_id)


@dataclass
class GenConfig:
    """Tunables; built from the generator settings by :meth:`from_settings`."""

    arms: list[str] = field(default_factory=list)
    default_model: str = "openai/smollm2-135m"
    allowed_models: list[str] = field(default_factory=list)
    default_prompt_version: str | None = None
    rotation: list[str] = field(default_factory=list)
    experiment: str = "prompt-rotation"
    # TIP_PROMPT_VERSION=bandit:v1,v2,…: a bandit over these versions (tipsml.versions)
    bandit_versions: list[str] = field(default_factory=list)
    bandit_epsilon: float = 0.05
    bandit_per_arm: bool = True
    bandit_refresh_s: float = 1.0
    cache_enabled: bool = True
    cache_max: int = 4
    cache_ttl_s: int = 6 * 3600
    ctx_ttl_s: int = 7 * 86400
    reward_window_s: int = 86400
    deadline_s: float = 1.5       # the miss path: LLM within this, else fallback
    refresh_timeout_s: float = 20.0
    max_tokens: int = 48
    temperature: float = 0.7
    max_tip_chars: int = 240
    candidates: int = 3           # generated per (arm, version, model) and refresh ...
    keep: int = 2                 # ... of which at most this many (the best that pass) kept
    miss_attempts: int = 2        # LLM calls a cache miss may make within its deadline
    min_score: float = 6.0        # a passing candidate must also rank at least this high
    refresh_min_interval_s: float = 30.0
    refill_on_miss: bool = True
    redis_timeout_s: float = 0.05
    exposures_maxlen: int = 100_000
    bg_concurrency: int = 1

    @classmethod
    def from_settings(cls, s) -> GenConfig:
        def g(name, default):
            return getattr(s, name, default)

        from tipsml.versions import parse_mode

        mode, listed = parse_mode(list(g("tip_prompt_version", [])))
        return cls(
            bandit_versions=listed if mode == "bandit" else [],
            bandit_epsilon=g("prompt_bandit_epsilon", cls.bandit_epsilon),
            bandit_per_arm=g("prompt_bandit_per_arm", cls.bandit_per_arm),
            arms=list(g("arms", [])), default_model=g("llm_model", cls.default_model),
            allowed_models=list(g("generator_allowed_models", [])),
            default_prompt_version=g("default_prompt_version", None),
            rotation=listed if mode == "rotation" else [],
            experiment=g("prompt_experiment", cls.experiment),
            cache_enabled=g("generator_cache_enabled", True),
            cache_max=g("generator_cache_max", cls.cache_max),
            cache_ttl_s=g("generator_cache_ttl_s", cls.cache_ttl_s),
            reward_window_s=g("reward_window_s", cls.reward_window_s),
            deadline_s=g("generator_deadline_s", cls.deadline_s),
            refresh_timeout_s=g("generator_refresh_timeout_s", cls.refresh_timeout_s),
            max_tokens=g("generator_max_tokens", cls.max_tokens),
            temperature=g("generator_temperature", cls.temperature),
            max_tip_chars=g("generator_max_tip_chars", cls.max_tip_chars),
            candidates=g("generator_candidates", cls.candidates),
            keep=g("generator_keep", cls.keep),
            miss_attempts=g("generator_miss_attempts", cls.miss_attempts),
            min_score=g("generator_min_score", cls.min_score),
            refresh_min_interval_s=g("generator_refresh_min_interval_s",
                                     cls.refresh_min_interval_s),
            refill_on_miss=g("generator_refill_on_miss", True),
            redis_timeout_s=g("generator_redis_timeout_s", cls.redis_timeout_s),
            bg_concurrency=g("generator_bg_concurrency", cls.bg_concurrency),
        )


@dataclass
class GenerateOutcome:
    reply: dict
    record: dict          # what the background bookkeeping writes
    refill: tuple | None  # (user, arm, version, model) to top up after replying
    fallback_reason: str | None = None
    llm: Any = None       # LLMResult on the llm path


class Generator:
    def __init__(self, cfg: GenConfig, redis, llm: LLMClient, metrics=None):
        self.cfg = cfg
        self.r = redis
        self.llm = llm
        self.m = metrics
        prompts.validate(cfg.rotation)
        prompts.validate(cfg.bandit_versions)
        self.version_bandit = None
        if cfg.bandit_versions:
            from tipsml.versions import VersionBandit

            self.version_bandit = VersionBandit(tuple(cfg.bandit_versions), cfg.bandit_epsilon,
                                                cfg.bandit_per_arm)
        self._vstats: tuple[float, dict] = (float("-inf"), {})
        self._vrng = np.random.default_rng()
        prompts.get(None, cfg.default_prompt_version)  # unknown default: fail at start-up
        self.allowed_models = {cfg.default_model, *cfg.allowed_models}
        self.cache = CandidateCache(cfg, redis, metrics)
        self.writer = TipWriter(cfg, llm, metrics)
        self.refresher = Refresher(cfg, redis, self.cache, self.writer, self.allowed_models,
                                   lambda user_id: self.select_version(user_id, None), metrics)
        self.signals = SignalProcessor(cfg, redis, self.refresher)

    # ------------------------------------------------------------ selection
    def select_version(self, user_id: str, requested: str | None) -> prompts.PromptVersion:
        return prompts.choose(user_id, requested, self.cfg.rotation, self.cfg.experiment,
                              self.cfg.default_prompt_version)

    async def version_stats(self) -> dict:
        """The per-(arm, version) reward statistics, merged over their shards, at most
        ``bandit_refresh_s`` old; on a Redis error the last copy (or none) serves."""
        at, stats = self._vstats
        if time.monotonic() - at < self.cfg.bandit_refresh_s:
            return stats
        from tipsml.state import read_version_stats

        try:
            stats = await asyncio.wait_for(read_version_stats(self.r),
                                           self.cfg.redis_timeout_s * 4)
        except Exception:  # noqa: BLE001 - stale statistics are fine for a bandit
            pass
        self._vstats = (time.monotonic(), stats)
        return stats

    async def choose_version(self, user_id: str, arm: str, requested: str | None):
        """(prompt version, how it was chosen, propensity or None)."""
        if requested or self.version_bandit is None:
            how = "request" if requested else ("rotation" if len(self.cfg.rotation) > 1
                                               else "default")
            return self.select_version(user_id, requested), how, None
        c = self.version_bandit.choose(await self.version_stats(), arm, self._vrng)
        return prompts.get(c.version), "bandit", c.propensity

    def select_model(self, requested: str | None) -> str:
        if not requested:
            return self.cfg.default_model
        if requested not in self.allowed_models:
            raise ContractError(ErrorCode.invalid_request,
                                f"model {requested!r} is not allowed here; allowed: "
                                f"{', '.join(sorted(self.allowed_models))}")
        return requested

    @staticmethod
    def select_arm(arm: str | None) -> str:
        if arm is None:
            return GENERAL_ARM
        if not ARM_RE.match(arm):
            raise ContractError(ErrorCode.invalid_request,
                                "arm must be 1..64 characters of letters, digits, _ . : -")
        return arm

    # ------------------------------------------------------------ request path
    async def generate(self, req: GenerateRequest) -> GenerateOutcome:
        t0 = time.perf_counter()
        arm = self.select_arm(req.arm)
        pv, pv_how, pv_p = await self.choose_version(req.user_id, arm, req.prompt_version)
        model = self.select_model(req.model)
        entry, remaining, signals = await self.cache.take(req.user_id, arm, pv.version, model)
        source, reason, llm_res, overlong = "cache", None, None, False
        if self.cache.servable(entry, pv.hash):
            tip, used_model = entry["tip"], entry.get("model", model)
            overlong = bool(entry.get("overlong"))
        else:
            if entry is not None:  # stale candidate of an edited prompt or other rules
                remaining = 0
            ctx = assemble(req.context, req.profile_features, signals)
            bound = G.bind(ctx, arm, pv)
            miss = await self.writer.for_request(pv.render(ctx, arm), bound, pv.version, model,
                                                 t0)
            llm_res, reason = miss.llm, miss.reason
            if miss.tip is not None:
                source, tip, used_model, overlong = "llm", miss.tip, model, miss.overlong
            else:
                reason = reason or "bad_output:none"
                source, used_model = "fallback", "fallback"
                tip = fallbacks.pick(arm, ctx, req.user_id, bound)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        reply = {"ok": True, "tip": tip, "prompt_version": pv.version, "prompt_hash": pv.hash,
                 "model": used_model, "source": source, "latency_ms": round(latency_ms, 3),
                 "arm": arm, "overlong": overlong}
        if reason:
            reply["fallback_reason"] = reason
        if req.request_id:
            reply["request_id"] = req.request_id
        if req.decision_id:
            reply["decision_id"] = req.decision_id
        if pv_how == "bandit":
            reply["prompt_choice"] = pv_how
            reply["prompt_propensity"] = pv_p
        rotated = not req.prompt_version and len(self.cfg.rotation) > 1
        record = {"user_id": req.user_id, "prompt_version": pv.version, "prompt_hash": pv.hash,
                  "experiment": self.cfg.experiment if rotated else "",
                  "arm": arm, "source": source, "model": used_model, "req_model": model,
                  "decision_id": req.decision_id or "", "request_id": req.request_id or "",
                  "ts": time.time(), "pv_mode": pv_how if pv_how == "bandit" else "",
                  "pv_p": f"{pv_p:.9g}" if pv_p is not None else "",
                  "context": req.context.model_dump(exclude_none=True) if req.context else None,
                  "profile_features": req.profile_features}
        refill = None
        if self.cfg.cache_enabled and self.cfg.refill_on_miss and remaining <= 1:
            refill = (req.user_id, arm, pv.version, model)
        return GenerateOutcome(reply, record, refill, reason, llm_res)

    async def record(self, rec: dict) -> None:
        """Bookkeeping after the reply: exposure, decision → version, counters, context."""
        pipe = self.r.pipeline(transaction=False)
        exposure = {k: rec[k] for k in ("user_id", "prompt_version", "prompt_hash", "experiment",
                                        "arm", "source", "model", "decision_id", "request_id")}
        if rec.get("pv_mode"):  # the version bandit's choice and its propensity (for OPE)
            exposure["pv_mode"], exposure["pv_p"] = rec["pv_mode"], rec["pv_p"]
        exposure["ts"] = f"{rec['ts']:.3f}"
        pipe.xadd(EXPOSURES_STREAM, exposure, maxlen=self.cfg.exposures_maxlen, approximate=True)
        pipe.hincrby(PV_SERVED_KEY, rec["prompt_version"], 1)
        if rec["decision_id"]:
            gk = gen_key(rec["decision_id"], rec["user_id"])
            pipe.hset(gk, mapping={k: exposure[k] for k in (
                "prompt_version", "prompt_hash", "arm", "source", "model", "user_id", "ts",
                *(("pv_mode", "pv_p") if "pv_mode" in exposure else ()))})
            pipe.expire(gk, self.cfg.reward_window_s)
        ck = combo_key(rec["user_id"])
        pipe.sadd(ck, f"{rec['prompt_version']}\x1f{rec['req_model']}")
        pipe.expire(ck, self.cfg.ctx_ttl_s)
        if rec.get("context") is not None or rec.get("profile_features") is not None:
            pipe.set(ctx_key(rec["user_id"]),
                     json.dumps({"context": rec.get("context"),
                                 "profile_features": rec.get("profile_features"),
                                 "stored_at": rec["ts"]}),
                     ex=self.cfg.ctx_ttl_s)
        await pipe.execute()

    # ------------------------------------------------------------ the other pieces
    async def refresh(self, user_id: str, arms: list[str] | None = None,
                      combos: list[tuple[str, str]] | None = None, progress=None,
                      only_below: int | None = None) -> RefreshResult:
        return await self.refresher.refresh(user_id, arms, combos, progress, only_below)

    async def on_signal(self, sig: Signal, progress=None) -> tuple[str, RefreshResult | None]:
        return await self.signals.on_signal(sig, progress)

    def schedule_refill(self, user_id: str, arm: str, version: str, model: str) -> None:
        self.refresher.schedule_refill(user_id, arm, version, model)

    def spawn(self, coro):
        return self.refresher.spawn(coro)

    async def drain(self, timeout: float = 10.0) -> None:
        await self.refresher.drain(timeout)
