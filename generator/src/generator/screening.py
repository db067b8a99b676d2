"""The LLM call and the screening of its answers (no Redis, no NATS here).

Every generated candidate goes through the guard (:mod:`tipsml.guard`) before it is
cached or served: :func:`screen` cleans a raw completion up and judges it, :func:`select`
keeps the best that pass and rank at least ``min_score``. :class:`TipWriter` makes the
calls — a request's cache miss within its deadline (:meth:`TipWriter.for_request`) and a
refresh's candidates in the background (:meth:`TipWriter.candidate`), the latter yielding
to requests waiting on the model — and counts what it screened.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from tipsml import guard as G
from tipsml.llm import STOP_SEQUENCES, LLMClient, LLMError, postprocess

BELOW_BAR = "below_min_score"  # passed the guard, ranked under GENERATOR_MIN_SCORE


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


@dataclass
class MissResult:
    """What a cache miss got from the model: a tip to serve, or why not."""

    tip: str | None = None
    overlong: bool = False
    reason: str | None = None
    llm: Any = None  # the last LLMResult


class TipWriter:
    """LLM calls and screening; ``cfg`` is the generator's :class:`GenConfig`."""

    def __init__(self, cfg, llm: LLMClient, metrics=None):
        self.cfg = cfg
        self.llm = llm
        self.m = metrics
        self._fg = 0  # requests waiting on the LLM: background generation yields to them
        self._bg = asyncio.Semaphore(max(1, cfg.bg_concurrency))

    async def for_request(self, messages, bound: G.Bound, version: str, model: str,
                          t0: float) -> MissResult:
        """A cache miss: up to ``miss_attempts`` answers within ``deadline_s`` (counted
        from ``t0``; a second try only with half the deadline left)."""
        out = MissResult()
        self._fg += 1
        try:
            for attempt in range(max(1, self.cfg.miss_attempts)):
                left = self.cfg.deadline_s - (time.perf_counter() - t0)
                if attempt and left < self.cfg.deadline_s / 2:
                    break  # no time for another answer: the fallback serves
                try:
                    out.llm = await self.llm.complete(
                        messages, model=model, max_tokens=self.cfg.max_tokens,
                        temperature=self.cfg.temperature, timeout=max(0.05, left),
                        stop=STOP_SEQUENCES)
                except LLMError as e:
                    self._llm_error(model, e)
                    out.reason = out.reason or e.kind
                    break
                self.observe_llm("request", out.llm)
                sc = screen(bound, out.llm.text, out.llm.finish_reason == "length",
                            self.cfg.max_tip_chars)
                if self.count_screened(version, sc, bound):
                    out.tip, out.overlong, out.reason = sc.text, sc.overlong, None
                    break
                out.reason = f"bad_output:{sc.verdict.reason or BELOW_BAR}"
        finally:
            self._fg -= 1
        return out

    async def candidate(self, messages, bound: G.Bound, version: str, model: str):
        """One background candidate (a refresh): waits while requests wait on the model,
        at most ``bg_concurrency`` at once. Returns the :class:`Screened` candidate, or
        raises :class:`tipsml.llm.LLMError`."""
        while self._fg:  # requests waiting on the LLM go first
            await asyncio.sleep(0.02)
        async with self._bg:
            try:
                out = await self.llm.complete(
                    messages, model=model, max_tokens=self.cfg.max_tokens,
                    temperature=self.cfg.temperature, timeout=self.cfg.refresh_timeout_s,
                    stop=STOP_SEQUENCES)
            except LLMError as e:
                self._llm_error(model, e)
                raise
        self.observe_llm("refresh", out)
        return screen(bound, out.text, out.finish_reason == "length", self.cfg.max_tip_chars)

    def _llm_error(self, model: str, e: LLMError) -> None:
        if self.m:
            self.m.llm_errors.labels(model, e.kind).inc()

    def count_screened(self, version: str, sc: Screened, bound: G.Bound) -> bool:
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

    def observe_llm(self, purpose: str, r) -> None:
        if not self.m:
            return
        self.m.llm_latency.labels(r.model, purpose).observe(r.latency_ms / 1000.0)
        self.m.llm_tokens.labels(r.model, "prompt").inc(r.prompt_tokens)
        self.m.llm_tokens.labels(r.model, "completion").inc(r.completion_tokens)
