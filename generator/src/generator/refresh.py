"""Refreshing a user's candidates (signal-driven) and topping a list up after a request
emptied it (refill), in the background.

A refresh generates ``candidates`` per (arm, version, model) for the user's stored
context (``tips:genctx:{u}``, its hour moved forward to now) and recent signals, keeps
the best ``keep`` that pass the guard and the ranker's bar, and pushes them to the
cache; the (version, model) pairs are the ones the user was served
(``tips:gencombo:{u}``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tipsml import guard as G
from tipsml import prompts
from tipsml.context import assemble
from tipsml.contract import Context
from tipsml.keys import combo_key, ctx_key, lock_key, sig_key
from tipsml.llm import LLMError

from .cache import SIGNALS_KEPT, CandidateCache
from .screening import BELOW_BAR, Screened, TipWriter, select

log = logging.getLogger(__name__)


class TransientError(Exception):
    """The work can succeed later (Redis or LLM down): nak with delay, do not dead-letter."""


@dataclass
class RefreshResult:
    written: int = 0
    skipped_full: int = 0
    failed: int = 0
    bad_output: int = 0          # candidates the guard rejected or under the ranker's bar
    generated: int = 0           # candidates screened
    rejected: dict[str, int] = field(default_factory=dict)  # primary reason -> count
    errors: list[str] = field(default_factory=list)


class Refresher:
    def __init__(self, cfg, redis, cache: CandidateCache, writer: TipWriter,
                 allowed_models: set[str], default_version, metrics=None):
        self.cfg = cfg
        self.r = redis
        self.cache = cache
        self.writer = writer
        self.allowed_models = allowed_models
        self.default_version = default_version  # user_id -> PromptVersion
        self.m = metrics
        self._bg_tasks: set[asyncio.Task] = set()

    async def stored_context(self, user_id: str) -> tuple[Any, dict | None, list]:
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

    async def combos(self, user_id: str) -> list[tuple[str, str]]:
        raw = await self.r.smembers(combo_key(user_id))
        out = []
        for b in raw:
            v, _, m = (b.decode() if isinstance(b, bytes) else b).partition("\x1f")
            if v in prompts.REGISTRY and m in self.allowed_models:
                out.append((v, m))
        if not out:
            out = [(self.default_version(user_id).version, self.cfg.default_model)]
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
            context, profile, signals = await self.stored_context(user_id)
            combos = combos or await self.combos(user_id)
        except Exception as e:  # noqa: BLE001
            raise TransientError(f"redis: {type(e).__name__}: {e}") from None
        ctx = assemble(context, profile, signals)
        arms = arms or list(self.cfg.arms)
        for version, model in combos:
            pv = prompts.REGISTRY[version]
            down = False
            for arm in arms:
                if only_below is not None:
                    try:
                        if await self.cache.size(user_id, arm, version, model) >= only_below:
                            res.skipped_full += 1
                            continue
                    except Exception as e:  # noqa: BLE001
                        raise TransientError(f"redis: {e}") from None
                bound = G.bind(ctx, arm, pv)
                screened: list[Screened] = []
                for _ in range(max(1, self.cfg.candidates)):
                    if progress is not None:
                        await progress()
                    try:
                        sc = await self.writer.candidate(pv.render(ctx, arm), bound, version,
                                                         model)
                    except LLMError as e:
                        res.failed += 1
                        res.errors.append(e.kind)
                        if e.kind in ("timeout", "unavailable", "circuit_open"):
                            down = True  # the server is down: do not burn the rest
                            break
                        continue
                    res.generated += 1
                    if not self.writer.count_screened(version, sc, bound):
                        res.bad_output += 1
                        r = sc.verdict.reason or BELOW_BAR
                        res.rejected[r] = res.rejected.get(r, 0) + 1
                    screened.append(sc)
                kept = select(bound, screened, self.cfg.keep, self.cfg.min_score)
                if kept:
                    try:
                        await self.cache.put(user_id, arm, version, model, pv.hash, kept)
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
