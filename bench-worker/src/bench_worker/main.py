"""Bench worker: takes ``bench.run`` jobs and ``bench.cell.>`` cells from the BENCH work
queue (pull consumers ``bench-jobs`` / ``bench-cells``: any number of workers share them)
and answers ``bench.leaderboard``, ``bench.experiments``, ``bench.runs`` (queue group
``bench-worker``; NATS Services API name ``tips-bench``).

Wiring only (:class:`tipsml.messaging.lifecycle.Worker`, the shared pull loop and
endpoint helper). One cell at a time per worker (a cell is a model's generations +
judging; running two at once would load two models). Graceful stop: the cell in hand
gets ``SHUTDOWN_TIMEOUT_S`` to finish; one cut short is redelivered to another worker
after ack_wait — nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tipsml import metrics as M
from tipsml import subjects as S
from tipsml.messaging.breaker import CircuitBreaker
from tipsml.messaging.connection import prepare_jetstream
from tipsml.messaging.lifecycle import Worker, run_service
from tipsml.messaging.pull import PullConsumer
from tipsml.messaging.service import package_version

from .handlers import Handlers
from .service import BenchService, Counters, consumer_specs
from .settings import BenchSettings
from .tracking import Tracker, default_tracking_uri

log = logging.getLogger("bench_worker")


class BenchMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.latency = Histogram("bench_handler_latency_seconds", "handler time per subject",
                                 ["subject"], buckets=M.LATENCY_BUCKETS + (60.0, 300.0, 900.0),
                                 registry=r)
        self.jobs = Counter("bench_jobs_total", "bench.run jobs by outcome", ["outcome"],
                            registry=r)
        self.cells = Counter("bench_cells_total", "cells by outcome", ["outcome"], registry=r)
        self.cell_s = Histogram("bench_cell_duration_seconds", "generate + judge + log per cell",
                                buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800), registry=r)
        self.busy = Gauge("bench_cells_in_progress", "cells being worked on", registry=r)
        self.requests = Counter("bench_requests_total",
                                "bench queries by subject and outcome code",
                                ["subject", "code"], registry=r)
        self.refused = Counter("bench_requests_refused_total",
                               "requests refused unanswered, by subject and reason "
                               "(refused_reply: the reply subject is not an inbox)",
                               ["subject", "reason"], registry=r)


async def serve(settings: BenchSettings, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    import redis.asyncio as aioredis

    from tipsml.llm import litellm_module

    async with Worker("bench-worker", settings, ready=ready, stop=stop) as w:
        m = BenchMetrics()
        port = w.metrics(m.registry)
        uri = settings.mlflow_tracking_uri or default_tracking_uri()
        tracker = await asyncio.to_thread(Tracker, uri, settings.artifact_root)
        await asyncio.to_thread(litellm_module)  # import once, before the first cell
        redis = w.closing(aioredis.from_url(settings.redis_url))
        await w.connect()
        jobs_spec, cells_spec = consumer_specs(settings)
        await prepare_jetstream(w.js, settings, ["BENCH", "BENCH_STATUS", "DEADLETTER"],
                                [jobs_spec, cells_spec])
        svc = BenchService(settings, w.nc, redis, tracker,
                           Counters(jobs=m.jobs, cells=m.cells, cell_s=m.cell_s, busy=m.busy))
        h = Handlers(svc, m)
        await w.service(
            name="tips-bench", version=package_version("tips-bench-worker"),
            queue_group=S.Q_BENCH,
            description="model x prompt x scenario experiments, leaderboards",
            metadata={"tracking_uri": uri, "worker_id": svc.worker_id,
                      "jobs": f"{S.BENCH_RUN} (JetStream BENCH)",
                      "asyncapi": "docs/asyncapi.yaml"},
            endpoints=h.endpoints())
        # one cell at a time per worker (two at once would load two models); in_progress
        # every third of ack_wait while a cell runs
        w.consume(PullConsumer(w.js, jobs_spec, h.job, settle=svc.job_settle))
        w.consume(PullConsumer(w.js, cells_spec, h.cell, settle=svc.cell_settle,
                               heartbeat_s=max(1.0, settings.cell_ack_wait_s / 3.0),
                               breaker=CircuitBreaker(3, settings.retry_delay_s)))
        await w.run(metrics_port=port, tracking_uri=uri, worker_id=svc.worker_id)


def run() -> None:
    run_service(BenchSettings, serve)


if __name__ == "__main__":
    run()
