"""The bench coordinator: jobs → cells on the BENCH work queue → MLflow runs → leaderboard.

:class:`BenchService` only puts the pieces together; each does one job and is testable
alone:

* :class:`bench_worker.jobs.JobQueue` — ``bench.run`` (consumer ``bench-jobs``): authorise,
  validate, publish the cells of the first unfinished phase, finish the job;
* :class:`bench_worker.cells.CellRunner` — ``bench.cell.>`` (consumer ``bench-cells``, any
  number of workers): lease, run, log, record, ack last;
* :class:`bench_worker.status.StatusPublisher` — progress events on
  ``bench.status.<job_id>``;
* :class:`bench_worker.queries.Queries` — ``bench.leaderboard`` / ``bench.experiments`` /
  ``bench.runs``;
* :mod:`bench_worker.admin` — the admin check.

Every step is safe to repeat, so any worker may die at any point: the flow is described
in :mod:`bench_worker.jobs` and :mod:`bench_worker.cells`.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from bench_worker.cells import CellRunner, cell_nak_delays
from bench_worker.jobs import JobQueue, ModelSizes, job_nak_delays
from bench_worker.queries import Queries
from bench_worker.status import StatusPublisher
from bench_worker.store import JobStore
from bench_worker.tracking import Tracker
from tipsml import subjects as S
from tipsml.llm import LLMClient
from tipsml.messaging.pull import RetryOrDeadLetter, RetryPolicy


class Transient(Exception):
    """A failure worth retrying later (LLM/MLflow/Redis/NATS unavailable)."""


@dataclass
class Counters:
    """Optional metric hooks (the worker passes Prometheus objects)."""

    jobs: Any = None      # Counter(outcome)
    cells: Any = None     # Counter(outcome)
    cell_s: Any = None    # Histogram
    busy: Any = None      # Gauge

    def inc(self, which: str, label: str) -> None:
        c = getattr(self, which)
        if c is not None:
            c.labels(label).inc()


def consumer_specs(settings) -> tuple[S.ConsumerSpec, S.ConsumerSpec]:
    """The two durables with the worker's settings (cells: ack_wait and max_deliver)."""
    import dataclasses

    cells = dataclasses.replace(S.BENCH_CELLS_CONSUMER, ack_wait_s=settings.cell_ack_wait_s,
                                max_deliver=settings.cell_max_deliver)
    return S.BENCH_JOBS_CONSUMER, cells


class BenchService:
    def __init__(self, settings, nc, redis, tracker: Tracker, counters: Counters | None = None):
        self.s = settings
        self.nc = nc
        self.js = js = nc.jetstream()
        self.store = JobStore(redis)
        self.tracker = tracker
        self.c = counters or Counters()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.llm = LLMClient(model=settings.llm_model, api_base=settings.llm_api_base,
                             api_key=settings.llm_api_key, timeout=settings.llm_timeout_s,
                             retries=1, keep_alive=settings.keep_alive,
                             breaker_failures=5, breaker_s=2.0)
        jobs_spec, cells_spec = self.specs = consumer_specs(settings)
        # one backoff formula (tipsml.messaging.pull.RetryPolicy): these durables have no
        # configured backoff (a crash's redelivery waits ack_wait), so their nak schedules
        self.job_settle = RetryOrDeadLetter(
            js, RetryPolicy.of(jobs_spec, job_nak_delays(jobs_spec.max_deliver)),
            S.DLQ_BENCH_JOB)
        self.cell_settle = RetryOrDeadLetter(
            js, RetryPolicy.of(cells_spec, cell_nak_delays(settings.retry_delay_s,
                                                           cells_spec.max_deliver)),
            f"{S.DLQ_BENCH_CELL}.failed")
        self.status = StatusPublisher(js, self.store, self.worker_id)
        self.jobs = JobQueue(settings, js, self.store, tracker, self.status, self.job_settle,
                             self.c, ModelSizes(settings))
        self.cells = CellRunner(settings, self.store, tracker, self.status, self.cell_settle,
                                self.jobs, self.llm, self.c, self.worker_id)
        self.queries = Queries(settings, tracker)

    # the public verbs, one per piece
    async def handle_job(self, msg) -> str:
        return await self.jobs.handle(msg)

    async def handle_cell(self, msg) -> str:
        return await self.cells.handle(msg)

    async def handle_leaderboard(self, msg) -> bytes:
        return await self.queries.handle_leaderboard(msg)

    async def handle_experiments(self, msg) -> bytes:
        return await self.queries.handle_experiments(msg)

    async def handle_runs(self, msg) -> bytes:
        return await self.queries.handle_runs(msg)

    def leaderboard(self, experiment: str, job_id: str | None = None, judge: str = "auto",
                    chart: bool = False, agreement: bool = False) -> dict:
        return self.queries.leaderboard(experiment, job_id, judge, chart, agreement)
