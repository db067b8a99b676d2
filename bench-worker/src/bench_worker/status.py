"""Job progress events on ``bench.status.<job_id>`` (best effort: the work goes on when
one cannot be published; ``Nats-Msg-Id`` makes a repeated step publish once)."""

from __future__ import annotations

import json
import logging
import time

from bench_worker.job import BenchJob
from bench_worker.store import JobStore
from tipsml import subjects as S

log = logging.getLogger("bench_worker")


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


class StatusPublisher:
    def __init__(self, js, store: JobStore, worker_id: str):
        self.js = js
        self.store = store
        self.worker_id = worker_id

    async def publish(self, job_id: str, event: str, msg_id: str, **fields) -> None:
        payload = {"job_id": job_id, "event": event, "ts": time.time(),
                   "worker": self.worker_id, **fields}
        try:
            await self.js.publish(S.bench_status_subject(job_id), dumps(payload),
                                  headers={"Nats-Msg-Id": f"bench-status:{job_id}:{msg_id}"},
                                  timeout=5.0)
        except Exception as e:  # noqa: BLE001 - progress is best effort, work goes on
            log.warning("status %s for %s not published: %s", event, job_id, e)

    async def progress(self, job: BenchJob) -> dict:
        done, failed = await self.store.counts(job.id)
        total = job.n_cells
        eta = await self.store.eta_s(job.id, done, failed, total)
        return {"experiment": job.experiment, "done": done, "failed": failed, "total": total,
                "eta_s": None if eta is None else round(eta, 1)}
