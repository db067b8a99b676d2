"""Subject → bench call (:class:`bench_worker.service.BenchService`). JetStream messages
go through the shared pull loop (every message ends acked, nak'ed with the consumer's
delay, or dead-lettered); requests through the shared endpoint helper (every request
ends in exactly one reply)."""

from __future__ import annotations

import time

from tipsml import subjects as S
from tipsml.contract import ErrorCode
from tipsml.messaging.endpoint import Endpoint, EndpointMetrics

# a query that outlives BENCH_LEADERBOARD_TIMEOUT_S
TOO_LONG = [(TimeoutError, ErrorCode.timeout, "{subject} took too long")]


class Handlers:
    def __init__(self, service, metrics):
        self.svc = service
        self.m = metrics

    async def job(self, msg) -> str:
        t0 = time.perf_counter()
        try:
            return await self.svc.handle_job(msg)
        finally:
            self.m.latency.labels("bench.run").observe(time.perf_counter() - t0)

    async def cell(self, msg) -> str:
        t0 = time.perf_counter()
        try:
            return await self.svc.handle_cell(msg)
        finally:
            self.m.latency.labels("bench.cell").observe(time.perf_counter() - t0)

    def endpoints(self) -> list[tuple[S.EndpointSpec, Endpoint]]:
        m = EndpointMetrics(self.m.latency, self.m.requests, refused=self.m.refused)
        fns = {"leaderboard": self.svc.handle_leaderboard,
               "experiments": self.svc.handle_experiments, "runs": self.svc.handle_runs}
        return [(spec, Endpoint(spec.subject, fns[spec.name], raw=True, metrics=m,
                                errors=TOO_LONG))
                for spec in S.BENCH_ENDPOINTS]
