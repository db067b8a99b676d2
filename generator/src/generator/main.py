"""Generator worker: ``tips.generate`` (request-reply, ``generator`` queue group) and the
durable JetStream consumer ``generator-signals`` on ``signals.>``.

Raw nats-py on the request path (a cache hit is one Redis round trip; FastStream's
per-message overhead would be most of the budget). Each request runs in its own task so
one cache miss waiting on the LLM never queues the cache hits behind it. Signals are
pulled in small batches, at most ``GENERATOR_SIGNAL_CONCURRENCY`` at once.
"""

from __future__ import annotations

import asyncio
import logging

import nats
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from tipsml import metrics as M
from tipsml import prompts
from tipsml import subjects as S
from generator.generation import GenConfig, Generator
from tipsml.llm import LLMClient, litellm_module
from tipsml.natsutil import connect, ensure_or_check_consumer, prepare_jetstream
from tipsml.state import connect_redis
from tipsml.service import package_version, start_service
from tipsml.worker import announce, run_service, stop_event

from .handlers import Handlers
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


async def _signal_loop(js, h: Handlers, settings: GeneratorSettings, stop: asyncio.Event,
                       m: GeneratorMetrics) -> None:
    spec = S.SIGNALS_CONSUMER
    psub = None
    slots = asyncio.Semaphore(max(1, settings.generator_signal_concurrency))
    tasks: set[asyncio.Task] = set()

    async def one(msg):
        m.inflight.inc()
        try:
            await h.signal(msg)
        except Exception:
            log.exception("signal handler crashed")
        finally:
            m.inflight.dec()
            slots.release()

    while not stop.is_set():
        try:
            if psub is None:
                await ensure_or_check_consumer(js, spec, settings)
                psub = await js.pull_subscribe_bind(consumer=spec.durable, stream=spec.stream)
        except Exception as e:  # noqa: BLE001 - NATS down or reconnecting: try again shortly
            log.warning("signal consumer bind failed: %r", e)
            await asyncio.sleep(1.0)
            continue
        await slots.acquire()
        free = 1
        while free < settings.generator_fetch_batch and not slots.locked():
            await slots.acquire()
            free += 1
        msgs = []
        try:
            msgs = await psub.fetch(batch=free, timeout=settings.generator_fetch_timeout_s)
        except (TimeoutError, nats.errors.TimeoutError):
            pass
        except asyncio.CancelledError:
            break
        except Exception as e:  # noqa: BLE001 - reconnecting, consumer deleted, ...
            log.warning("signal fetch failed: %r", e)
            if isinstance(e, nats.js.errors.NotFoundError):
                psub = None
            await asyncio.sleep(0.5)
        for _ in range(free - len(msgs)):
            slots.release()
        for msg in msgs:
            t = asyncio.create_task(one(msg))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    if psub is not None:
        try:
            await psub.unsubscribe()
        except Exception as e:  # noqa: BLE001 - connection already gone
            log.debug("unsubscribe failed: %r", e)


async def serve(settings: GeneratorSettings, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None, metrics: GeneratorMetrics | None = None
                ) -> None:
    """Run until ``stop`` (default: SIGINT/SIGTERM). ``metrics`` lets tests read counters."""
    from tipsml.versions import parse_mode

    pv_mode, pv_listed = parse_mode(list(settings.tip_prompt_version))
    prompts.validate(pv_listed)
    prompts.get(None, settings.default_prompt_version)
    litellm_module()  # ~2 s import, paid before announcing ready
    m = metrics or GeneratorMetrics()
    port = M.serve(m.registry, settings.metrics_port, settings.metrics_addr)
    # blocking pool: a burst of signals waits for a connection instead of failing
    # (a RedisCluster client for a redis-cluster:// URL: tips:gen:{user}:… is read by the
    # reward script in the user's slot)
    r = connect_redis(settings.redis_url, max_connections=64, pool_timeout_s=5.0,
                      socket_timeout=5.0)
    llm = LLMClient.from_settings(settings)
    gen = Generator(GenConfig.from_settings(settings), r, llm, m)
    nc = await connect(settings, "generator")
    js = nc.jetstream()
    await prepare_jetstream(js, settings, ["SIGNALS", "DEADLETTER"],
                            provision_all_streams=True)
    h = Handlers(gen, m, settings, js)
    # NATS Services API (ADR-32): discoverable as tips-generator; a task per request
    svc = await start_service(
        nc, name="tips-generator", version=package_version("tips-generator"),
        queue_group=S.Q_GENERATOR, description="writes tips with a local LLM; cached candidates",
        metadata={"model": settings.llm_model or "", "prompt_versions": ",".join(prompts.known()),
                  "contract": "tipsml.contract", "asyncapi": "docs/asyncapi.yaml"})
    for ep in S.GENERATOR_ENDPOINTS:
        await svc.add_request_endpoint(ep.name, ep.subject, getattr(h, ep.name),
                                       metadata=ep.metadata())
    await nc.flush()
    stop = stop or stop_event()
    sig_task = asyncio.create_task(_signal_loop(js, h, settings, stop, m))
    announce("generator", metrics_port=port, model=settings.llm_model,
             api_base=settings.llm_api_base, prompt_versions=prompts.known(),
             default_prompt_version=prompts.get(None, settings.default_prompt_version).version,
             **{"rotation" if pv_mode == "rotation" else "version_bandit": pv_listed})
    if ready:
        ready.set()
    await stop.wait()
    await svc.stop_endpoints()
    await svc.wait_idle(5)
    try:
        await asyncio.wait_for(sig_task, timeout=15)
    except TimeoutError:
        sig_task.cancel()
    await gen.drain(timeout=5)
    await svc.stop()
    await nc.drain()
    await r.aclose()


def run() -> None:
    run_service(GeneratorSettings, serve)


if __name__ == "__main__":
    run()
