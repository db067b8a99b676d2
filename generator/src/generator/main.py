"""Generator worker: ``tips.generate`` (request-reply, ``generator`` queue group) and the
durable JetStream consumer ``generator-signals`` on ``signals.>``.

Wiring only (:class:`tipsml.messaging.lifecycle.Worker`): the request path is an
:class:`tipsml.messaging.endpoint.Endpoint` on raw nats-py (a cache hit is one Redis round
trip), each request in its own task so one cache miss waiting on the LLM never queues the
cache hits behind it; signals go through the shared pull loop
(:class:`tipsml.messaging.pull.PullConsumer`), at most ``GENERATOR_SIGNAL_CONCURRENCY`` at
once.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tipsml import metrics as M
from tipsml import prompts
from tipsml import subjects as S
from tipsml.llm import LLMClient, litellm_module
from tipsml.messaging.breaker import CircuitBreaker
from tipsml.messaging.connection import prepare_jetstream
from tipsml.messaging.lifecycle import Worker, run_service
from tipsml.messaging.pull import PullConsumer, RetryOrDeadLetter, RetryPolicy
from tipsml.messaging.service import package_version
from tipsml.state import connect_redis

from .generation import GenConfig, Generator
from .handlers import Handlers, signal_dlq_id
from .settings import GeneratorSettings

log = logging.getLogger("generator")


class GeneratorMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.latency = Histogram("generator_request_latency_seconds",
                                 "tips.generate handler latency by tip source",
                                 ["subject", "source"], buckets=M.LATENCY_BUCKETS, registry=r)
        self.requests = Counter("generator_requests_total", "requests by subject and outcome code",
                                ["subject", "code"], registry=r)
        self.served = Counter("generator_tips_served_total", "tips served by source and arm",
                              ["source", "arm"], registry=r)
        self.prompt_served = Counter("generator_prompt_served_total",
                                     "tips served per prompt version", ["prompt_version"],
                                     registry=r)
        self.cache = Counter("generator_cache_requests_total", "candidate cache hits and misses",
                             ["result"], registry=r)
        self.fallbacks = Counter("generator_fallback_total", "fallback tips served, by reason",
                                 ["reason"], registry=r)
        self.profile_fallbacks = Counter(
            "generator_profile_fallback_total",
            "profile feature values unusable (wrong type, non-finite, too long): fallback used",
            ["reason"], registry=r)
        self.overlong = Counter("generator_overlong_total", "tips cut because the model ran long",
                                ["source"], registry=r)
        self.llm_latency = Histogram("generator_llm_latency_seconds", "LLM call latency",
                                     ["model", "purpose"], buckets=M.LATENCY_BUCKETS, registry=r)
        self.llm_tokens = Counter("generator_llm_tokens_total", "LLM tokens by kind",
                                  ["model", "kind"], registry=r)
        self.llm_errors = Counter("generator_llm_errors_total", "LLM failures by kind",
                                  ["model", "kind"], registry=r)
        self.candidates = Counter("generator_candidates_written_total",
                                  "pre-generated candidates written to the cache",
                                  ["prompt_version"], registry=r)
        self.generated = Counter("generator_candidates_generated_total",
                                 "LLM candidates screened by the guard (cache refresh and "
                                 "cache miss)", ["prompt_version"], registry=r)
        self.rejected = Counter("generator_rejected_total",
                                "LLM candidates not served: the guard's primary reason, or "
                                "below_min_score (passed, ranked under the bar)",
                                ["reason", "prompt_version"], registry=r)
        self.signals = Counter("generator_signals_total", "signals by outcome", ["outcome"],
                               registry=r)
        self.refresh = Counter("generator_refresh_generations_total",
                               "signal-driven generations by result", ["result"], registry=r)
        self.redis_errors = Counter("generator_redis_errors_total", "Redis failures by step",
                                    ["step"], registry=r)
        self.inflight = Gauge("generator_signals_inflight", "signals being processed", registry=r)


async def serve(settings: GeneratorSettings, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None, metrics: GeneratorMetrics | None = None
                ) -> None:
    """Run until ``stop`` (default: SIGINT/SIGTERM). ``metrics`` lets tests read counters."""
    from tipsml.versions import parse_mode

    pv_mode, pv_listed = parse_mode(list(settings.tip_prompt_version))
    prompts.validate(pv_listed)
    prompts.get(None, settings.default_prompt_version)
    litellm_module()  # ~2 s import, paid before announcing ready
    async with Worker("generator", settings, ready=ready, stop=stop) as w:
        m = metrics or GeneratorMetrics()
        port = w.metrics(m.registry)
        # blocking pool: a burst of signals waits for a connection instead of failing
        # (a RedisCluster client for a redis-cluster:// URL: tips:gen:{user}:… is read by the
        # reward script in the user's slot)
        r = w.closing(connect_redis(settings.redis_url, max_connections=64, pool_timeout_s=5.0,
                                    socket_timeout=5.0))
        gen = Generator(GenConfig.from_settings(settings), r, LLMClient.from_settings(settings), m)
        w.on_close(lambda: gen.drain(timeout=w.left(5.0)), what="background refreshes")
        await w.connect()
        await prepare_jetstream(w.js, settings, ["SIGNALS", "DEADLETTER"],
                                provision_all_streams=True)
        spec = S.SIGNALS_CONSUMER
        settle = RetryOrDeadLetter(w.js, RetryPolicy.of(spec), S.DLQ_SIGNALS,
                                   dlq_msg_id=signal_dlq_id)
        h = Handlers(gen, m, settings, settle)
        await w.service(
            name="tips-generator", version=package_version("tips-generator"),
            queue_group=S.Q_GENERATOR,
            description="writes tips with a local LLM; cached candidates",
            metadata={"model": settings.llm_model or "",
                      "prompt_versions": ",".join(prompts.known()),
                      "contract": "tipsml.contract", "asyncapi": "docs/asyncapi.yaml"},
            endpoints=h.endpoints())
        # signals: small batches, at most GENERATOR_SIGNAL_CONCURRENCY at once; the durable
        # is created (or checked) when bound, and re-bound if it is deleted
        w.consume(PullConsumer(
            w.js, spec, h.signal, settle=settle, settings=settings,
            concurrency=settings.generator_signal_concurrency,
            batch=settings.generator_fetch_batch,
            fetch_timeout_s=settings.generator_fetch_timeout_s,
            breaker=CircuitBreaker(settings.generator_breaker_failures,
                                   settings.generator_breaker_s),
            inflight=m.inflight))
        await w.run(metrics_port=port, model=settings.llm_model, api_base=settings.llm_api_base,
                    prompt_versions=prompts.known(),
                    default_prompt_version=prompts.get(
                        None, settings.default_prompt_version).version,
                    **{"rotation" if pv_mode == "rotation" else "version_bandit": pv_listed})


def run() -> None:
    run_service(GeneratorSettings, serve)


if __name__ == "__main__":
    run()
