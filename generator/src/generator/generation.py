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
* ``tips:gen:{u}:{decision_id}`` (user hash tag, :func:`tipsml.state.generation_key`) hash ``prompt_version``, ``prompt_hash``, ``arm``, ``source``,
  ``model``, ``user_id``, ``ts`` — written when a request carries ``decision_id`` so the
  feedback consumer can attribute a reaction to a prompt version; TTL = reward window.
* ``tips:exposures`` Redis stream (approximately capped): one entry per tip served, with
  user, version, hash, experiment, arm, source, model, decision id.
* ``tips:pv:served`` hash version → tips served (a durable twin of the Prometheus counter).

The request path is one pipelined Redis round trip on a cache hit (take + recent
signals), the reply, then the bookkeeping writes in the background.

Every generated candidate goes through the guard (:mod:`tipsml.guard`) before it is
cached or served; a refresh generates ``candidates`` per (arm, version, model), keeps
the best ``keep`` that pass (ranked by :meth:`tipsml.guard.Bound.score`), and a request
whose LLM answer is rejected gets a tip of the curated fallback library
(:mod:`tipsml.fallbacks`), itself guarded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tipsml import fallbacks, prompts
from tipsml import guard as G
from tipsml import keys as K
from tipsml.context import assemble
from tipsml.contract import Context, ContractError, ErrorCode, GenerateRequest, Signal
from tipsml.keys import (  # noqa: F401
    EXPOSURES_STREAM,
    PV_SERVED_KEY,
    cand_key,
    combo_key,
    ctx_key,
    lock_key,
    sig_key,
)
from tipsml.llm import STOP_SEQUENCES, LLMClient, LLMError, postprocess

log = logging.getLogger(__name__)

GENERAL_ARM = "general"
ARM_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SIGNALS_KEPT = 20
BELOW_BAR = "below_min_score"  # passed the guard, ranked under GENERATOR_MIN_SCORE

# KEYS[1] candidate list. Returns {entry, remaining} or nil.
TAKE_LUA = r"""
local n = redis.call('LLEN', KEYS[1])
if n == 0 then return false end
if n > 1 then return {redis.call('LPOP', KEYS[1]), n - 1} end
return {redis.call('LINDEX', KEYS[1], 0), 1}
"""


def gen_key(decision_id: str, user_id: str) -> str:
    # in the user's hash slot: the reward script reads it with the user's other keys
    return K.generation_key(decision_id, user_id)


class TransientError(Exception):
    """The work can succeed later (Redis or LLM down): nak with delay, do not dead-letter."""


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
        g = lambda name, default: getattr(s, name, default)
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


@dataclass
class RefreshResult:
    written: int = 0
    skipped_full: int = 0
    failed: int = 0
    bad_output: int = 0          # candidates the guard rejected or under the ranker's bar
    generated: int = 0           # candidates screened
    rejected: dict[str, int] = field(default_factory=dict)  # primary reason -> count
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Screened:
    """One LLM completion after clean-up and the guard."""

    text: str
    raw: str
    overlong: bool
    verdict: G.Verdict


def screen(bound: G.Bound, raw: str, truncated: bool = False,
           max_chars: int = G.MAX_CHARS) -> Screened:
    """Post-process a raw completion and judge it with the guard."""
    tp = postprocess(raw, max_chars, truncated=truncated)
    v = bound.check(tp.text, raw)
    if v.ok and not tp.ok:  # the clean-up refused it (e.g. an injected instruction)
        why = "echo" if tp.reason == "unsafe" else "length"
        v = G.Verdict(False, (why,), {why: f"postprocess: {tp.reason}"})
    return Screened(tp.text, raw or "", tp.overlong, v)


def select(bound: G.Bound, screened: list[Screened], keep: int,
           min_score: float = 0.0) -> list[G.Ranked]:
    """The best ``keep`` candidates that passed the guard and score at least
    ``min_score`` (:meth:`tipsml.guard.Bound.score`), best first."""
    ok = [(s.text, s.overlong, s.raw) for s in screened if s.verdict.ok]
    return [c for c in G.rank(bound, ok) if c.score >= min_score][:max(0, keep)]


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
        self._take = redis.register_script(TAKE_LUA)
        self._fg = 0  # requests waiting on the LLM: background refresh yields to them
        self._bg = asyncio.Semaphore(max(1, cfg.bg_concurrency))
        self._bg_tasks: set[asyncio.Task] = set()

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
        key = cand_key(req.user_id, arm, pv.version, model)
        entry, remaining, signals = None, 0, []
        try:
            pipe = self.r.pipeline(transaction=False)
            if self.cfg.cache_enabled:
                await self._take(keys=[key], client=pipe)
            pipe.lrange(sig_key(req.user_id), 0, SIGNALS_KEPT - 1)
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
        source, reason, llm_res, overlong = "cache", None, None, False
        if (entry is not None and entry.get("prompt_hash") == pv.hash and entry.get("tip")
                and entry.get("guard") == G.GUARD_ID):
            tip, used_model = entry["tip"], entry.get("model", model)
            overlong = bool(entry.get("overlong"))
        else:
            if entry is not None:  # stale candidate of an edited prompt or other rules
                remaining = 0
            ctx = assemble(req.context, req.profile_features, signals)
            bound = G.bind(ctx, arm, pv)
            self._fg += 1
            try:
                for attempt in range(max(1, self.cfg.miss_attempts)):
                    left = self.cfg.deadline_s - (time.perf_counter() - t0)
                    if attempt and left < self.cfg.deadline_s / 2:
                        break  # no time for another answer: the fallback serves
                    try:
                        llm_res = await self.llm.complete(
                            pv.render(ctx, arm), model=model, max_tokens=self.cfg.max_tokens,
                            temperature=self.cfg.temperature, timeout=max(0.05, left),
                            stop=STOP_SEQUENCES)
                    except LLMError as e:
                        if self.m:
                            self.m.llm_errors.labels(model, e.kind).inc()
                        reason = reason or e.kind
                        break
                    self._observe_llm("request", llm_res)
                    sc = screen(bound, llm_res.text, llm_res.finish_reason == "length",
                                self.cfg.max_tip_chars)
                    if self._count_screened(pv.version, sc, bound):
                        source, tip, used_model, overlong = "llm", sc.text, model, sc.overlong
                        reason = None
                        break
                    reason = f"bad_output:{sc.verdict.reason or BELOW_BAR}"
            finally:
                self._fg -= 1
            if source != "llm":
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

    # ------------------------------------------------------------ refresh path
    async def _stored_context(self, user_id: str) -> tuple[Any, dict | None, list]:
        pipe = self.r.pipeline(transaction=False)
        pipe.get(ctx_key(user_id))
        pipe.lrange(sig_key(user_id), 0, SIGNALS_KEPT - 1)
        raw, sigs = await pipe.execute()
        context, profile = None, None
        if raw:
            d = json.loads(raw)
            profile = d.get("profile_features")
            c = d.get("context")
            if c:
                try:
                    context = Context.model_validate(c)
                except ValueError:
                    context = None
                if context is not None and context.hour_of_day is not None:
                    # the stored hour is the user's clock at request time: move it forward
                    elapsed_h = int(max(0.0, time.time() - float(d.get("stored_at", time.time())))
                                    // 3600)
                    if elapsed_h:
                        h = context.hour_of_day + elapsed_h
                        dow = context.day_of_week
                        if dow is not None:
                            dow = (dow + h // 24) % 7
                        context = context.model_copy(update={"hour_of_day": h % 24,
                                                             "day_of_week": dow})
        return context, profile, [json.loads(s) for s in sigs]

    async def _combos(self, user_id: str) -> list[tuple[str, str]]:
        raw = await self.r.smembers(combo_key(user_id))
        out = []
        for b in raw:
            v, _, m = (b.decode() if isinstance(b, bytes) else b).partition("\x1f")
            if v in prompts.REGISTRY and m in self.allowed_models:
                out.append((v, m))
        if not out:
            out = [(self.select_version(user_id, None).version, self.cfg.default_model)]
        return sorted(set(out))

    async def refresh(self, user_id: str, arms: list[str] | None = None,
                      combos: list[tuple[str, str]] | None = None, progress=None,
                      only_below: int | None = None) -> RefreshResult:
        """Refresh ``user_id``'s candidates: per (arm, version, model), generate
        ``candidates``, guard them, keep the best ``keep`` that pass.

        ``only_below``: skip a list already holding that many candidates.
        ``progress``: async callable invoked before each LLM call (JetStream in_progress).
        Raises :class:`TransientError` when nothing could be written because Redis or the
        LLM is down.
        """
        res = RefreshResult()
        try:
            context, profile, signals = await self._stored_context(user_id)
            combos = combos or await self._combos(user_id)
        except Exception as e:  # noqa: BLE001
            raise TransientError(f"redis: {type(e).__name__}: {e}") from None
        ctx = assemble(context, profile, signals)
        arms = arms or list(self.cfg.arms)
        for version, model in combos:
            pv = prompts.REGISTRY[version]
            down = False
            for arm in arms:
                key = cand_key(user_id, arm, version, model)
                if only_below is not None:
                    try:
                        if await self.r.llen(key) >= only_below:
                            res.skipped_full += 1
                            continue
                    except Exception as e:  # noqa: BLE001
                        raise TransientError(f"redis: {e}") from None
                bound = G.bind(ctx, arm, pv)
                screened: list[Screened] = []
                for _ in range(max(1, self.cfg.candidates)):
                    if progress is not None:
                        await progress()
                    while self._fg:  # requests waiting on the LLM go first
                        await asyncio.sleep(0.02)
                    async with self._bg:
                        try:
                            out = await self.llm.complete(
                                pv.render(ctx, arm), model=model,
                                max_tokens=self.cfg.max_tokens,
                                temperature=self.cfg.temperature,
                                timeout=self.cfg.refresh_timeout_s, stop=STOP_SEQUENCES)
                        except LLMError as e:
                            res.failed += 1
                            res.errors.append(e.kind)
                            if self.m:
                                self.m.llm_errors.labels(model, e.kind).inc()
                            if e.kind in ("timeout", "unavailable", "circuit_open"):
                                down = True  # the server is down: do not burn the rest
                                break
                            continue
                    self._observe_llm("refresh", out)
                    sc = screen(bound, out.text, out.finish_reason == "length",
                                self.cfg.max_tip_chars)
                    res.generated += 1
                    if not self._count_screened(version, sc, bound):
                        res.bad_output += 1
                        r = sc.verdict.reason or BELOW_BAR
                        res.rejected[r] = res.rejected.get(r, 0) + 1
                    screened.append(sc)
                kept = select(bound, screened, self.cfg.keep, self.cfg.min_score)
                if kept:
                    now = round(time.time(), 3)
                    try:
                        pipe = self.r.pipeline(transaction=True)
                        for c in reversed(kept):  # the best ends up first (served first)
                            pipe.lpush(key, json.dumps(
                                {"tip": c.text, "model": model, "prompt_hash": pv.hash,
                                 "guard": G.GUARD_ID, "score": c.score,
                                 "overlong": c.overlong, "ts": now}))
                        pipe.ltrim(key, 0, self.cfg.cache_max - 1)
                        pipe.expire(key, self.cfg.cache_ttl_s)
                        await pipe.execute()
                    except Exception as e:  # noqa: BLE001
                        raise TransientError(f"redis: {type(e).__name__}: {e}") from None
                    res.written += len(kept)
                    if self.m:
                        self.m.candidates.labels(version).inc(len(kept))
                if down:
                    break
        if res.written == 0 and res.failed and not res.skipped_full:
            raise TransientError(f"llm: {', '.join(sorted(set(res.errors)))}")
        return res

    async def on_signal(self, sig: Signal, progress=None) -> tuple[str, RefreshResult | None]:
        """Record the signal, merge its context, refresh the user's candidates (throttled).

        Returns (outcome, result); outcome is ``refreshed`` | ``throttled``.
        Raises :class:`TransientError` (nak with delay) when Redis or the LLM is down.
        """
        uid = sig.user_id
        try:
            pipe = self.r.pipeline(transaction=False)
            pipe.lpush(sig_key(uid), json.dumps({"kind": sig.kind, "ts": sig.ts}))
            pipe.ltrim(sig_key(uid), 0, SIGNALS_KEPT - 1)
            pipe.expire(sig_key(uid), self.cfg.ctx_ttl_s)
            await pipe.execute()
            await self._merge_signal_context(sig)
            if self.cfg.refresh_min_interval_s > 0:
                got = await self.r.set(lock_key(uid), "1", nx=True,
                                       px=int(self.cfg.refresh_min_interval_s * 1000))
                if not got:
                    return "throttled", None
        except Exception as e:  # noqa: BLE001
            raise TransientError(f"redis: {type(e).__name__}: {e}") from None
        try:
            return "refreshed", await self.refresh(uid, progress=progress)
        except TransientError:
            try:  # let the redelivery (or the next signal) try again at once
                await self.r.delete(lock_key(uid))
            except Exception as e:  # noqa: BLE001
                log.debug("could not release the refresh throttle: %r", e)
            raise

    async def _merge_signal_context(self, sig: Signal) -> None:
        p = sig.payload or {}
        upd: dict[str, Any] = {}
        src = p.get("context") if isinstance(p.get("context"), dict) else p
        for k in ("hour_of_day", "day_of_week", "tasks"):
            if k in src:
                upd[k] = src[k]
        prof = p.get("profile_features") if isinstance(p.get("profile_features"), dict) else None
        if not upd and prof is None:
            return
        raw = await self.r.get(ctx_key(sig.user_id))
        d = json.loads(raw) if raw else {}
        ctx = dict(d.get("context") or {})
        ctx.update(upd)
        try:
            ctx = Context.model_validate(ctx).model_dump(exclude_none=True)
        except ValueError:  # a malformed payload part is ignored, the signal still counts
            ctx = d.get("context")
        d.update(context=ctx, stored_at=time.time())
        if prof is not None:
            d["profile_features"] = prof
        await self.r.set(ctx_key(sig.user_id), json.dumps(d), ex=self.cfg.ctx_ttl_s)

    # ------------------------------------------------------------ background
    def schedule_refill(self, user_id: str, arm: str, version: str, model: str) -> None:
        """Top the (user, arm, version, model) list up in the background (throttled)."""
        async def run():
            try:
                lk = lock_key(f"{user_id}:{arm}:{version}:{model}", "refill")
                if not await self.r.set(lk, "1", nx=True,
                                        px=int(max(self.cfg.refresh_min_interval_s, 1.0) * 1000)):
                    return
                await self.refresh(user_id, [arm], [(version, model)],
                                   only_below=self.cfg.cache_max)
                await self.r.delete(lk)
            except TransientError as e:
                log.info("refill for %s/%s failed: %s", user_id, arm, e)
            except Exception:
                log.exception("refill failed")
        self.spawn(run())

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.create_task(coro)
        self._bg_tasks.add(t)
        t.add_done_callback(self._bg_tasks.discard)
        return t

    async def drain(self, timeout: float = 10.0) -> None:
        if self._bg_tasks:
            _done, pending = await asyncio.wait(set(self._bg_tasks), timeout=timeout)
            for t in pending:
                t.cancel()

    def _count_screened(self, version: str, sc: Screened, bound: G.Bound) -> bool:
        """Count a screened candidate; True when it may be served (passes the guard and
        the ranker's bar). Below the bar counts as reason ``below_min_score``."""
        ok = sc.verdict.ok and bound.score(sc.text) >= self.cfg.min_score
        if self.m:
            self.m.generated.labels(version).inc()
            if not sc.verdict.ok:
                self.m.rejected.labels(sc.verdict.reason, version).inc()
            elif not ok:
                self.m.rejected.labels(BELOW_BAR, version).inc()
        return ok

    def _observe_llm(self, purpose: str, r) -> None:
        if not self.m:
            return
        self.m.llm_latency.labels(r.model, purpose).observe(r.latency_ms / 1000.0)
        self.m.llm_tokens.labels(r.model, "prompt").inc(r.prompt_tokens)
        self.m.llm_tokens.labels(r.model, "completion").inc(r.completion_tokens)
