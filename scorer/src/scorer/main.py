"""Scorer worker: ``tips.score`` / ``tips.stats`` / ``tips.reset`` on the ``scorer`` queue group.

Wiring only: the lifecycle (connect, serve, drain within ``SHUTDOWN_TIMEOUT_S`` on
SIGTERM) is :class:`tipsml.messaging.lifecycle.Worker`; the verbs are
:class:`tipsml.messaging.endpoint.Endpoint` s registered with the NATS Services API as
``tips-scorer`` (``$SRV.PING/INFO/STATS`` find it), each message in its own task so one
slow Redis call never queues the others.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tipsml import metrics as M
from tipsml import subjects as S
from tipsml.messaging.connection import prepare_jetstream
from tipsml.messaging.fastsub import FastConnection
from tipsml.messaging.lifecycle import Worker, run_service
from tipsml.messaging.service import package_version
from tipsml.state import StateStore

from .decisionlog import AckedPublisher, DecisionLogWriter
from .handlers import Handlers
from .scoring import Scorer
from .settings import ScorerSettings

log = logging.getLogger("scorer")
SERVICE_NAME = "tips-scorer"


class ScorerMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.latency = Histogram("scorer_request_latency_seconds", "handler latency per subject",
                                 ["subject"], buckets=M.LATENCY_BUCKETS, registry=r)
        self.requests = Counter("scorer_requests_total", "requests by subject and outcome code",
                                ["subject", "code"], registry=r)
        self.decisions = Counter("scorer_decisions_total", "decisions by policy, arm and role",
                                 ["policy", "arm", "role"], registry=r)
        self.explored = Counter("scorer_explored_total", "live decisions that explored",
                                ["policy"], registry=r)
        self.agreement = Counter("scorer_shadow_agreement_total",
                                 "shadow decisions agreeing with the live arm", ["policy", "agree"],
                                 registry=r)
        self.fallbacks = Counter("scorer_fallback_total", "uniform fallback decisions", ["reason"],
                                 registry=r)
        self.profile_fallbacks = Counter(
            "scorer_profile_fallback_total",
            "profile feature values unusable (wrong type, non-finite, too long): fallback used",
            ["reason"], registry=r)
        self.dropped = Counter("scorer_decision_log_dropped_total",
                               "decisions not logged because the writer queue was full",
                               registry=r)
        self.errors = Counter("scorer_decision_log_errors_total", "decision log write failures",
                              ["sink"], registry=r)
        self.queue = Gauge("scorer_decision_log_queue", "decisions waiting to be logged",
                           registry=r)
        self.lag = Gauge("scorer_decision_log_lag_seconds",
                         "age of the oldest decision not yet written (0 when caught up)",
                         registry=r)
        self.backpressure = Counter("scorer_decision_log_backpressure_total",
                                    "replies that waited for the decision log to catch up",
                                    registry=r)


async def serve(settings: ScorerSettings, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    async with Worker("scorer", settings, ready=ready, stop=stop) as w:
        m = ScorerMetrics()
        port = w.metrics(m.registry)
        store = w.closing(StateStore.from_settings(settings))
        await w.connect()
        await prepare_jetstream(w.js, settings, ["DECISIONS"], provision_all_streams=True)
        scorer = Scorer(settings, store)
        try:
            await store.warm(settings.redis_read_inflight + 1, scripts=False)
        except Exception as e:  # noqa: BLE001 - Redis down at start: serve fallbacks meanwhile
            log.warning("state store not reachable at start (%r): serving fallbacks until it is",
                        e)
        fast = await _fast_connection(w, settings)
        if fast is not None and settings.sync_score:
            # requests served without a task (Handlers.score_now): their reads leave as
            # the read of NATS ends, their replies as the Redis batch that answered ends
            fast.after_read.append(scorer.reader.flush_now)
            scorer.reader.on_settled.append(fast.flush_now)
        writer = DecisionLogWriter(store, AckedPublisher(w.nc, w.js, fast=fast),
                                   maxsize=settings.decision_queue_max,
                                   high_water=settings.decision_queue_high_water,
                                   linger_s=settings.decision_log_linger_s, metrics=m)
        writer.start()
        # at shutdown, after the requests in flight answered: write what the log holds
        # (leaving a second of the deadline to drain NATS and close Redis)
        w.on_close(lambda: writer.drain(timeout=max(0.1, w.left() - 1.0)), what="decision log")
        await w.service(
            name=SERVICE_NAME, version=package_version("tips-scorer"), queue_group=S.Q_SCORER,
            description="picks a tip kind (arm) per request with the user's bandit state",
            metadata={"policy": settings.default_policy,
                      "shadow": ",".join(settings.shadow_policies),
                      "contract": "tipsml.contract", "asyncapi": "docs/asyncapi.yaml"},
            endpoints=Handlers(scorer, writer, m, settings).endpoints(), idle_share=2.0,
            fast=fast, fast_endpoints=("score",))
        await w.run(metrics_port=port, policy=settings.default_policy,
                    shadow=settings.shadow_policies)
    log.info("scorer stopped: %d decisions written, %d not written", writer.written, writer.lost)


async def _fast_connection(w: Worker, settings: ScorerSettings) -> FastConnection | None:
    """tips.score's own connection (``SCORER_NATS_FAST_PATH``), closed at shutdown after
    the service stopped taking requests and the ones in flight answered; ``None`` (nats-py
    serves it) when it is off, with TLS, or when it cannot connect."""
    if not settings.nats_fast_path:
        return None
    fast = FastConnection.from_settings(settings, "scorer-score")
    if fast is None:
        log.info("NATS fast path off: TLS is configured (tips.score on nats-py)")
        return None
    try:
        await fast.connect()
    except (ConnectionError, OSError, TimeoutError) as e:
        log.warning("NATS fast path not connected (%r): tips.score on nats-py", e)
        return None
    w.closing(fast)
    return fast


def run() -> None:
    run_service(ScorerSettings, serve)


if __name__ == "__main__":
    run()
