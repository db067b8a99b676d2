"""The cell runner (consumer ``bench-cells``, any number of workers): one cell is a
model's generations over its scenarios, judged, logged as an MLflow run.

Per cell: skip if done; take a Redis lease (a duplicate from a re-sent job waits for the
worker holding it); renew the lease while generating and judging (the pull loop sends
the ``in_progress`` heartbeats); write the MLflow run; record it in Redis; publish
``cell_done``; let the job queue publish the next phase; ack last. A redelivered cell
whose MLflow run already finished is recorded, not redone. A transient failure (LLM,
MLflow, Redis down) is retried with the consumer's nak schedule; on the last delivery,
or for a permanent failure, the cell is recorded as failed and dead-lettered
(``dlq.bench.cell.failed``) and the job goes on without it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from bench_worker.job import BenchJob, Cell
from bench_worker.jobs import JobQueue
from bench_worker.judge import TRANSIENT, LLMJudge
from bench_worker.runner import run_cell
from bench_worker.status import StatusPublisher
from bench_worker.store import JobStore
from bench_worker.tracking import Tracker
from tipsml import subjects as S
from tipsml.contract import ContractError
from tipsml.llm import LLMClient, LLMError
from tipsml.messaging.pull import RetryOrDeadLetter

log = logging.getLogger("bench_worker")


def cell_nak_delays(retry_delay_s: float, max_deliver: int) -> tuple[float, ...]:
    """The nak schedule of a cell after a transient failure: ``BENCH_RETRY_DELAY_S`` ×
    the delivery number."""
    return tuple(retry_delay_s * n for n in range(1, max(2, max_deliver)))


class CellRunner:
    def __init__(self, settings, store: JobStore, tracker: Tracker, status: StatusPublisher,
                 settle: RetryOrDeadLetter, jobs: JobQueue, llm: LLMClient, counters,
                 worker_id: str):
        self.s = settings
        self.store = store
        self.tracker = tracker
        self.status = status
        self.settle = settle
        self.jobs = jobs
        self.llm = llm
        self.c = counters
        self.worker_id = worker_id

    def judge_for(self, job: BenchJob) -> LLMJudge:
        model = job.judge_model or self.s.judge_model or self.s.llm_model
        return LLMJudge(self.llm, model, max_retries=self.s.judge_max_retries,
                        max_tokens=self.s.judge_max_tokens, timeout_s=self.s.llm_timeout_s,
                        response_mode=self.s.judge_response_format,
                        keep_alive=self.s.keep_alive)

    async def handle(self, msg) -> str:
        meta = msg.metadata
        try:
            data = json.loads(msg.data)
            job = BenchJob.model_validate(data["job"])
            cell = job.cells()[int(data["cell"])]
        except Exception as e:  # noqa: BLE001 - poison: cannot even name the cell
            await self.settle.dead_letter(msg, f"unreadable cell: {type(e).__name__}: {e}",
                                          subject=f"{S.DLQ_BENCH_CELL}.invalid",
                                          msg_id=f"bench-cell-poison:{meta.sequence.stream}")
            return "invalid"
        if await self.store.is_done(job.id, cell.n):
            await self.jobs.advance_after(job, cell.phase)
            await msg.ack()
            return "done"
        ttl_ms = int(self.s.cell_ack_wait_s * 1500)
        if not await self.store.acquire(cell.key, self.worker_id, ttl_ms):
            # another live worker holds it (a duplicate from a re-sent job): let it finish
            await self.settle.nak(msg, self.s.cell_ack_wait_s)
            return "leased"
        renew = asyncio.create_task(self._renew(cell.key, ttl_ms))
        try:
            return await self._work(msg, job, cell)
        finally:
            renew.cancel()
            try:
                await self.store.release(cell.key, self.worker_id)
            except Exception as e:  # noqa: BLE001 - the lease expires by itself
                log.info("lease of %s not released: %s", cell.key, e)

    async def _renew(self, cell_key: str, ttl_ms: int) -> None:
        every = max(1.0, self.s.cell_ack_wait_s / 3.0)
        while True:
            await asyncio.sleep(every)
            try:
                await self.store.renew(cell_key, self.worker_id, ttl_ms)
            except Exception as e:  # noqa: BLE001 - next beat retries
                log.warning("lease renewal for %s failed: %s", cell_key, e)

    async def _work(self, msg, job: BenchJob, cell: Cell) -> str:
        n = msg.metadata.num_delivered
        current = {**cell.to_dict(), "label": cell.label()}
        t0 = time.perf_counter()
        try:
            run_id = await asyncio.to_thread(self.tracker.finished_run, job.experiment, cell.key)
            if run_id is None:
                prog = await self.status.progress(job)
                await self.status.publish(job.id, "cell_started", f"start:{cell.n}:{n}", **prog,
                                          current=current, delivery=n)
                run_id = await self._run(job, cell, t0)
            else:
                self.c.inc("cells", "recovered")
            await self.store.record_done(job.id, cell.n, run_id)
        except ContractError as e:  # e.g. a prompt version removed since validation
            return await self._failed(msg, job, cell, f"{e.code.value}: {e.message}")
        except Exception as e:  # noqa: BLE001 - LLMError, MLflow, Redis: classified
            transient = not isinstance(e, LLMError) or e.kind in TRANSIENT
            if isinstance(e, LLMError):
                reason = f"llm {e.kind}: {e.message[:300]}"
            else:
                reason = f"{type(e).__name__}: {str(e)[:300]}"
                log.exception("cell %s failed", cell.key)
            if transient and not self.settle.retry.exhausted(n):
                self.c.inc("cells", "retry")
                prog = await self.status.progress(job)
                await self.status.publish(job.id, "error", f"err:{cell.n}:{n}", **prog,
                                          current=current,
                                          error={"code": "unavailable", "message": reason},
                                          retrying=True, delivery=n)
                await self.settle.nak(msg)
                return "retry"
            return await self._failed(msg, job, cell, reason)
        prog = await self.status.progress(job)
        await self.status.publish(job.id, "cell_done", f"done:{cell.n}", **prog, run_id=run_id,
                                  current=current, seconds=round(time.perf_counter() - t0, 2))
        await self.jobs.advance_after(job, cell.phase)
        await msg.ack()  # last: the run is in MLflow and Redis, the next phase is out
        return "done"

    async def _run(self, job: BenchJob, cell: Cell, t0: float) -> str:
        judge = self.judge_for(job)
        if self.c.busy is not None:
            self.c.busy.inc()
        try:
            rec = await run_cell(job, cell, self.llm, judge, llm_timeout_s=self.s.llm_timeout_s,
                                 keep_alive=self.s.keep_alive, judge_model=judge.model)
        finally:
            if self.c.busy is not None:
                self.c.busy.dec()
        run_id = await asyncio.to_thread(
            self.tracker.log_cell, experiment=job.experiment, tags=rec.tags, params=rec.params,
            metrics=rec.metrics, artifacts=rec.artifacts, table=rec.table,
            run_name=rec.run_name)
        self.c.inc("cells", "done")
        if self.c.cell_s is not None:
            self.c.cell_s.observe(time.perf_counter() - t0)
        return run_id

    async def _failed(self, msg, job: BenchJob, cell: Cell, reason: str) -> str:
        seq = msg.metadata.sequence.stream
        self.c.inc("cells", "failed")
        await self.store.record_failed(job.id, cell.n, reason)
        # the dead letter is a record; the message is acked below, after the job moved on
        await self.settle.dead_letter(msg, reason, subject=f"{S.DLQ_BENCH_CELL}.failed",
                                      msg_id=f"bench-cell:{cell.key}:{seq}", term=False)
        prog = await self.status.progress(job)
        await self.status.publish(job.id, "cell_failed", f"failed:{cell.n}:{seq}", **prog,
                                  current={**cell.to_dict(), "label": cell.label()},
                                  error={"code": "internal", "message": reason})
        await self.jobs.advance_after(job, cell.phase)
        await msg.ack()
        return "failed"
