"""FEEDBACK messages → FeedbackProcessor, with metrics. The pull loop, retries and
dead letters are the shared toolkit's (:mod:`tipsml.messaging.pull`)."""

from __future__ import annotations

import time

from feedback_consumer.feedback import FeedbackProcessor


class Handlers:
    def __init__(self, processor: FeedbackProcessor, metrics):
        self.p = processor
        self.m = metrics

    async def feedback(self, msg) -> str:
        t0 = time.perf_counter()
        out = await self.p.handle(msg)
        m = self.m
        m.outcomes.labels(out.kind).inc()
        if out.kind == "applied":
            m.applied.labels(out.policy, out.arm).inc()
            m.reward_sum.labels(out.policy, out.arm).inc(out.reward)
        if out.kind in ("applied", "already_rewarded"):
            m.reactions.labels(out.policy, out.reaction, out.prompt_version or "unknown").inc()
        m.latency.observe(time.perf_counter() - t0)
        return out.kind  # "retry" counts toward the loop's breaker
