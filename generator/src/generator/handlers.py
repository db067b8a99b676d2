"""Subject → shared-library call. Every request ends in exactly one reply; every
JetStream message ends acked, nak'ed with a delay, or dead-lettered."""

from __future__ import annotations

import json
import logging
import time

from tipsml import subjects as S
from tipsml.contract import ContractError, ErrorCode, GenerateRequest, Signal, error_bytes, parse
from generator.generation import Generator, TransientError
from tipsml.natsutil import publish_dead_letter, reply_is_inbox
from tipsml.service import respond

log = logging.getLogger(__name__)


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Handlers:
    def __init__(self, gen: Generator, metrics, settings, js=None):
        self.gen = gen
        self.m = metrics
        self.settings = settings
        self.js = js
        self.spec = S.SIGNALS_CONSUMER

    # ---------------------------------------------------------------- tips.generate
    async def generate(self, msg) -> str:
        if not reply_is_inbox(msg.reply):  # a forged reply subject: never act, never publish
            self.m.requests.labels(S.TIPS_GENERATE, "refused_reply").inc()
            log.warning("refused tips.generate whose reply subject is not an inbox: %r",
                        (msg.reply or "")[:80])
            return "refused_reply"
        t0 = time.perf_counter()
        code, source, out, outcome = "ok", "none", None, None
        try:
            req = parse(GenerateRequest, msg.data)
            for why in req.profile_fallbacks.values():  # bad values use the fallback
                self.m.profile_fallbacks.labels(why).inc()
            outcome = await self.gen.generate(req)
            source = outcome.reply["source"]
            out = _dumps(outcome.reply)
        except ContractError as e:
            code = e.code.value
            out = error_bytes(e.code, e.message)
        except Exception as e:
            log.exception("internal error on tips.generate")
            code = "internal"
            out = error_bytes(ErrorCode.internal, type(e).__name__)
        code = await respond(msg, out, code)  # error replies also get ADR-32 headers
        self.m.latency.labels(S.TIPS_GENERATE, source).observe(time.perf_counter() - t0)
        self.m.requests.labels(S.TIPS_GENERATE, code).inc()
        if outcome is not None:
            self._count(outcome)
            self.gen.spawn(self._after(outcome))
        return code  # the outcome, for $SRV.STATS (tipsml.service)

    def _count(self, o) -> None:
        r = o.reply
        self.m.served.labels(r["source"], r["arm"]).inc()
        self.m.prompt_served.labels(r["prompt_version"]).inc()
        self.m.cache.labels("hit" if r["source"] == "cache" else "miss").inc()
        if o.fallback_reason:
            self.m.fallbacks.labels(o.fallback_reason.split(":")[0]).inc()
        if r.get("overlong"):
            self.m.overlong.labels(r["source"]).inc()

    async def _after(self, o) -> None:
        try:
            await self.gen.record(o.record)
        except Exception as e:  # noqa: BLE001 - bookkeeping must not break serving
            self.m.redis_errors.labels("record").inc()
            log.warning("exposure/record write failed: %r", e)
        if o.refill:
            self.gen.schedule_refill(*o.refill)

    # ---------------------------------------------------------------- signals.>
    async def signal(self, msg) -> None:
        md = msg.metadata
        deliveries = md.num_delivered if md else 1
        try:
            sig = parse(Signal, msg.data)
        except ContractError as e:
            await self._dead_letter(msg, f"invalid: {e.message}", deliveries)
            self.m.signals.labels("poison").inc()
            return
        try:
            outcome, res = await self.gen.on_signal(sig, progress=msg.in_progress)
        except TransientError as e:
            if deliveries >= self.spec.max_deliver:
                await self._dead_letter(msg, f"retries_exhausted: {e}", deliveries)
                self.m.signals.labels("exhausted").inc()
                return
            delay = self.spec.backoff_s[min(deliveries - 1, len(self.spec.backoff_s) - 1)] \
                if self.spec.backoff_s else 5.0
            await msg.nak(delay=delay)
            self.m.signals.labels("retry").inc()
            return
        except Exception as e:
            log.exception("signal handling failed")
            if deliveries >= self.spec.max_deliver:
                await self._dead_letter(msg, f"error: {type(e).__name__}", deliveries)
                self.m.signals.labels("exhausted").inc()
            else:
                await msg.nak(delay=5.0)
                self.m.signals.labels("retry").inc()
            return
        await msg.ack()
        self.m.signals.labels(outcome).inc()
        if res is not None:
            self.m.refresh.labels("written").inc(res.written)
            self.m.refresh.labels("failed").inc(res.failed)
            self.m.refresh.labels("bad_output").inc(res.bad_output)

    async def _dead_letter(self, msg, reason: str, deliveries: int) -> None:
        md = msg.metadata
        seq = md.sequence.stream if md else None
        try:
            await publish_dead_letter(self.js, S.DLQ_SIGNALS, msg.data, reason,
                                      origin_subject=msg.subject, deliveries=deliveries,
                                      msg_id=f"signals:{seq}" if seq is not None else None)
        except Exception as e:  # noqa: BLE001 - keep the message; it comes back later
            log.warning("dead-letter publish failed: %r", e)
            await msg.nak(delay=10.0)
            return
        await msg.term()
