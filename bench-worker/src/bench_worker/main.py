"""Bench worker: takes ``bench.run`` jobs and ``bench.cell.>`` cells from the BENCH work
queue (pull consumers ``bench-jobs`` / ``bench-cells``: any number of workers share them)
and answers ``bench.leaderboard``, ``bench.experiments``, ``bench.runs`` (queue group
``bench-worker``; NATS Services API name ``tips-bench``).

One cell at a time per worker (a cell is a model's generations + judging; running two
at once would load two models). Graceful stop: the cell in hand finishes (or, if killed,
is redelivered to another worker after ack_wait — nothing is lost).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import nats.errors
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from tipsml import metrics as M
from tipsml import subjects as S
from bench_worker.service import BenchService, Counters
from bench_worker.tracking import Tracker, default_tracking_uri
from tipsml.natsutil import connect, prepare_jetstream
from tipsml.service import package_version, start_service
from tipsml.worker import announce, run_service, stop_event

from .handlers import Handlers
from .settings import BenchSettings

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
        self.refused = Counter("bench_requests_refused_total",
                               "requests refused unanswered, by subject and reason "
                               "(refused_reply: the reply subject is not an inbox)",
                               ["subject", "reason"], registry=r)


def consumer_specs(settings: BenchSettings) -> tuple[S.ConsumerSpec, S.ConsumerSpec]:
    cells = dataclasses.replace(S.BENCH_CELLS_CONSUMER, ack_wait_s=settings.cell_ack_wait_s,
                                max_deliver=settings.cell_max_deliver)
    return S.BENCH_JOBS_CONSUMER, cells


async def _pull_loop(sub, handler, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            msgs = await sub.fetch(1, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            return
        except Exception as e:  # noqa: BLE001 - reconnecting: try again shortly
            log.warning("fetch failed: %s", e)
            await asyncio.sleep(0.5)
            continue
        for msg in msgs:
            await handler(msg)


async def serve(settings: BenchSettings, ready: asyncio.Event | None = None,
                stop: asyncio.Event | None = None) -> None:
    import redis.asyncio as aioredis
    from tipsml.llm import litellm_module

    m = BenchMetrics()
    port = M.serve(m.registry, settings.metrics_port, settings.metrics_addr)
    uri = settings.mlflow_tracking_uri or default_tracking_uri()
    tracker = await asyncio.to_thread(Tracker, uri, settings.artifact_root)
    await asyncio.to_thread(litellm_module)  # import once, before the first cell
    redis = aioredis.from_url(settings.redis_url)
    nc = await connect(settings, "bench-worker")
    js = nc.jetstream()
    jobs_spec, cells_spec = consumer_specs(settings)
    await prepare_jetstream(js, settings, ["BENCH", "BENCH_STATUS", "DEADLETTER"],
                            [jobs_spec, cells_spec])
    svc = BenchService(settings, nc, redis, tracker,
                       Counters(jobs=m.jobs, cells=m.cells, cell_s=m.cell_s, busy=m.busy))
    h = Handlers(svc, m)
    jobs_sub = await js.pull_subscribe_bind(jobs_spec.durable, stream=jobs_spec.stream)
    cells_sub = await js.pull_subscribe_bind(cells_spec.durable, stream=cells_spec.stream)
    # NATS Services API (ADR-32): the request-reply verbs, discoverable as tips-bench
    srv = await start_service(
        nc, name="tips-bench", version=package_version("tips-bench-worker"),
        queue_group=S.Q_BENCH, description="model x prompt x scenario experiments, leaderboards",
        metadata={"tracking_uri": uri, "worker_id": svc.worker_id,
                  "jobs": f"{S.BENCH_RUN} (JetStream BENCH)", "asyncapi": "docs/asyncapi.yaml"})
    for ep in S.BENCH_ENDPOINTS:
        await srv.add_request_endpoint(ep.name, ep.subject, getattr(h, ep.name),
                                       metadata=ep.metadata())
    await nc.flush()
    stop = stop or stop_event()
    loops = [asyncio.create_task(_pull_loop(jobs_sub, h.job, stop)),
             asyncio.create_task(_pull_loop(cells_sub, h.cell, stop))]
    announce("bench-worker", metrics_port=port, tracking_uri=uri, worker_id=svc.worker_id)
    if ready:
        ready.set()
    await stop.wait()
    await srv.stop_endpoints()
    await asyncio.wait(loops, timeout=settings.llm_timeout_s)
    await srv.wait_idle(5)
    await srv.stop()
    for sub in (jobs_sub, cells_sub):
        try:
            await sub.unsubscribe()
        except Exception as e:  # noqa: BLE001 - closing anyway
            log.debug("unsubscribe: %s", e)
    try:
        await asyncio.wait_for(nc.drain(), timeout=5)
    except Exception:  # noqa: BLE001 - pull subscriptions may not drain: close
        await nc.close()
    await redis.aclose()


def run() -> None:
    run_service(BenchSettings, serve)


if __name__ == "__main__":
    run()
