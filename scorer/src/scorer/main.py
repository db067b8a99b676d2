"""Scorer worker: ``tips.score`` / ``tips.stats`` / ``tips.reset`` on the ``scorer`` queue group.

Raw nats-py on the hot path (see bench/score_bench.py); each message is handled in its
own task so one slow Redis call never queues the others. Registered with the NATS
Services API as ``tips-scorer`` (tipsml.service): ``$SRV.PING/INFO/STATS`` find it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tipsml import metrics as M
from tipsml import subjects as S
from scorer.decisionlog import AckedPublisher, DecisionLogWriter
from tipsml.natsutil import connect, prepare_jetstream
from scorer.scoring import Scorer
from tipsml.service import package_version, start_service
from tipsml.state import StateStore
from tipsml.worker import announce, run_service, stop_event

from .handlers import Handlers
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
    m = ScorerMetrics()
    port = M.serve(m.registry, settings.metrics_port, settings.metrics_addr)
    store = StateStore.from_url(settings.redis_url, reward_window_s=settings.reward_window_s,
                                lam=settings.ridge_lambda, pooled_lambda=settings.pooled_lambda,
                                record_grace_s=settings.reward_record_grace_s,
                                global_policies=settings.global_policies,
                                state_ttl_s=settings.state_ttl_s,
                                global_refresh_s=settings.global_refresh_s)
    nc = await connect(settings, "scorer")
    js = nc.jetstream()
    await prepare_jetstream(js, settings, ["DECISIONS"], provision_all_streams=True)
    scorer = Scorer(settings, store)
    try:
        await store.warm(settings.redis_read_inflight + 1)
    except Exception as e:  # noqa: BLE001 - Redis down at start: serve fallbacks meanwhile
        log.warning("state store not reachable at start (%r): serving fallbacks until it is", e)
    writer = DecisionLogWriter(store, AckedPublisher(nc, js), maxsize=settings.decision_queue_max,
                               high_water=settings.decision_queue_high_water, metrics=m)
    writer.start()
    h = Handlers(scorer, writer, m, settings)
    # NATS Services API (ADR-32): discoverable as tips-scorer; queue group and a task
    # per message as before, the outcome of every request counted for $SRV.STATS
    svc = await start_service(
        nc, name=SERVICE_NAME, version=package_version("tips-scorer"), queue_group=S.Q_SCORER,
        description="picks a tip kind (arm) per request with the user's bandit state",
        metadata={"policy": settings.default_policy,
                  "shadow": ",".join(settings.shadow_policies),
                  "contract": "tipsml.contract", "asyncapi": "docs/asyncapi.yaml"})
    for ep in S.SCORER_ENDPOINTS:
        await svc.add_request_endpoint(ep.name, ep.subject, getattr(h, ep.name),
                                       metadata=ep.metadata())
    await nc.flush()
    announce("scorer", metrics_port=port, policy=settings.default_policy,
             shadow=settings.shadow_policies)
    if ready:
        ready.set()
    stop = stop or stop_event()
    await stop.wait()
    # Shutdown within settings.shutdown_timeout_s (default 8 s, under compose's and k8s's
    # 10 s): stop taking requests, let the in-flight ones answer, write what the decision
    # log holds, then close. Each step has its share of the deadline.
    deadline = time.monotonic() + settings.shutdown_timeout_s

    def left(share: float) -> float:
        return max(0.1, min(share, deadline - time.monotonic()))

    await svc.stop_endpoints()
    await svc.wait_idle(left(2.0))
    await writer.drain(timeout=left(settings.shutdown_timeout_s - 2.0))
    await svc.stop()
    try:
        await asyncio.wait_for(nc.drain(), left(1.0))
    except Exception:  # noqa: BLE001 - drain timed out: close hard
        await nc.close()
    await store.close()
    log.info("scorer stopped: %d decisions written, %d not written", writer.written, writer.lost)


def run() -> None:
    run_service(ScorerSettings, serve)


if __name__ == "__main__":
    run()
