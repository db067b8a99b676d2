"""Subject → generator call. The request-reply mechanics are the shared endpoint helper's
(:class:`tipsml.messaging.endpoint.Endpoint`: reply-subject check, parse, typed error
reply, metrics); the JetStream ones the shared pull loop's (:mod:`tipsml.messaging.pull`:
ack after the effect, one backoff formula, dead letters). Here only what each does."""

from __future__ import annotations

import json
import logging

from generator.generation import Generator, TransientError
from tipsml import subjects as S
from tipsml.contract import ContractError, GenerateRequest, Signal, parse
from tipsml.messaging.endpoint import Endpoint, EndpointMetrics, Reply
from tipsml.messaging.pull import RETRY, RetryOrDeadLetter, stream_seq

log = logging.getLogger(__name__)


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Handlers:
    def __init__(self, gen: Generator, metrics, settings, settle: RetryOrDeadLetter | None = None):
        self.gen = gen
        self.m = metrics
        self.settings = settings
        self.settle = settle  # signals: the consumer's retry_or_dead_letter

    def endpoints(self) -> list[tuple[S.EndpointSpec, Endpoint]]:
        (spec,) = S.GENERATOR_ENDPOINTS
        return [(spec, Endpoint(S.TIPS_GENERATE, self.generate, request=GenerateRequest,
                                metrics=EndpointMetrics(self.m.latency, self.m.requests),
                                error_labels=("none",)))]

    # ---------------------------------------------------------------- tips.generate
    async def generate(self, req: GenerateRequest, msg) -> Reply:
        for why in req.profile_fallbacks.values():  # bad values use the fallback
            self.m.profile_fallbacks.labels(why).inc()
        outcome = await self.gen.generate(req)
        return Reply(_dumps(outcome.reply), (outcome.reply["source"],),
                     lambda: self._after_reply(outcome))

    def _after_reply(self, outcome) -> None:
        self._count(outcome)
        self.gen.spawn(self._after(outcome))

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
    async def signal(self, msg) -> str:
        """One ``signals.>`` message; the pull loop acks it when this returns unsettled."""
        try:
            sig = parse(Signal, msg.data)
        except ContractError as e:
            await self.settle.dead_letter(msg, f"invalid: {e.message}")
            self.m.signals.labels("poison").inc()
            return "poison"
        try:
            outcome, res = await self.gen.on_signal(sig, progress=msg.in_progress)
        except Exception as e:  # noqa: BLE001 - TransientError (Redis/LLM down) or a bug
            if isinstance(e, TransientError):
                reason = f"retries_exhausted: {e}"
            else:
                log.exception("signal handling failed")
                reason = f"error: {type(e).__name__}"
            out = await self.settle(msg, reason)
            self.m.signals.labels("retry" if out == RETRY else "exhausted").inc()
            return RETRY
        self.m.signals.labels(outcome).inc()
        if res is not None:
            self.m.refresh.labels("written").inc(res.written)
            self.m.refresh.labels("failed").inc(res.failed)
            self.m.refresh.labels("bad_output").inc(res.bad_output)
        return outcome


def signal_dlq_id(msg) -> str | None:
    seq = stream_seq(msg)
    return f"signals:{seq}" if seq is not None else None
