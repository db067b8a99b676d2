"""The job queue (consumer ``bench-jobs``): authorise and validate a ``bench.run`` job,
publish the cells of its first unfinished phase, and finish the job (leaderboard run,
``done`` event) once every cell is settled.

A refused job gets an ``error`` event on ``bench.status.<job_id>`` and a dead letter on
``dlq.bench.job.<code>`` before any work; a job that cannot start (MLflow or Redis
down) is retried with the consumer's nak schedule and refused as ``unavailable`` on
its last delivery. Re-sending a job re-publishes the same cell ids
(``Nats-Msg-Id: bench-cell:<job_id>:<n>:a<attempt>``): JetStream drops the duplicates.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from bench_worker import leaderboard as LB
from bench_worker.admin import authorised
from bench_worker.job import BenchJob, cell_message, model_size_b, parse_parameter_size, validate
from bench_worker.status import StatusPublisher, dumps
from bench_worker.store import JobStore
from bench_worker.tracking import Tracker
from tipsml import prompts as P
from tipsml import subjects as S
from tipsml.contract import ContractError, ErrorCode, loads_object, parse
from tipsml.messaging.pull import RetryOrDeadLetter

log = logging.getLogger("bench_worker")


def job_nak_delays(max_deliver: int) -> tuple[float, ...]:
    """The nak schedule of a job that could not start: 2 s, 4 s, … (at most 30 s)."""
    return tuple(min(30.0, 2.0 * n) for n in range(1, max(2, max_deliver)))


class ModelSizes:
    """A model's size in billions of parameters: from its name, else from its server."""

    def __init__(self, settings):
        self.s = settings

    async def __call__(self, model: str) -> float | None:
        b = model_size_b(model)
        if b is not None:
            return b
        return await self.server_size(model)

    async def server_size(self, model: str) -> float | None:
        """Ask the server: Ollama ``/api/show`` → ``details.parameter_size``; an
        OpenAI-compatible ``/models`` entry with ``meta.n_params`` (llama.cpp)."""
        import httpx

        provider, _, name = model.partition("/")
        if not name:
            provider, name = "", model
        base = (self.s.llm_api_base or ("http://localhost:11434"
                                        if provider.startswith("ollama") else "")).rstrip("/")
        if not base:
            return None
        try:
            async with httpx.AsyncClient(timeout=self.s.model_info_timeout_s) as cli:
                if provider.startswith("ollama"):
                    r = await cli.post(f"{base}/api/show", json={"model": name})
                    if r.status_code == 200:
                        return parse_parameter_size(
                            (r.json().get("details") or {}).get("parameter_size"))
                    return None
                r = await cli.get(f"{base}/models")
                if r.status_code == 200:
                    for m in r.json().get("data", []):
                        if m.get("id") == name and (m.get("meta") or {}).get("n_params"):
                            return float(m["meta"]["n_params"]) / 1e9
        except Exception as e:  # noqa: BLE001 - unknown size is refused by validate()
            log.info("model info for %s unavailable: %s", model, e)
        return None


class JobQueue:
    def __init__(self, settings, js, store: JobStore, tracker: Tracker,
                 status: StatusPublisher, settle: RetryOrDeadLetter, counters,
                 model_size=None):
        self.s = settings
        self.js = js
        self.store = store
        self.tracker = tracker
        self.status = status
        self.settle = settle
        self.c = counters
        self.model_size = model_size or ModelSizes(settings)

    async def handle(self, msg) -> str:
        meta = msg.metadata
        sub = f"s{meta.sequence.stream}"
        job_id = "unknown"
        try:
            try:
                raw: Any = loads_object(msg.data)
                if isinstance(raw.get("job_id"), str):
                    job_id = raw["job_id"][:64]
            except ContractError:
                raw = None
            hdr_id = (msg.headers or {}).get("Tips-Job-Id")
            if hdr_id:
                job_id = hdr_id[:64]
            if not authorised(self.s.admin_token, msg):
                raise ContractError(ErrorCode.forbidden,
                                    "bench.run is admin only: missing or wrong Tips-Admin-Token")
            job = parse(BenchJob, msg.data)
            job_id = job.id
            if hdr_id and hdr_id != job.id:
                raise ContractError(ErrorCode.invalid_request,
                                    f"header Tips-Job-Id {hdr_id} does not match job id {job.id}")
            sizes = {m: await self.model_size(m) for m in job.models}
            validate(job, P.known(), sizes.get)
        except ContractError as e:
            return await self.refuse(msg, job_id, sub, e)
        try:
            await self.start(job, sub)
        except Exception as e:  # noqa: BLE001 - MLflow/Redis/NATS: retried, then refused
            log.exception("job %s: start failed", job.id)
            if self.settle.retry.exhausted(meta.num_delivered):
                return await self.refuse(msg, job.id, sub, ContractError(
                    ErrorCode.unavailable, f"job could not start: {type(e).__name__}: {e}"))
            await self.status.publish(job.id, "error", f"start:{sub}:{meta.num_delivered}",
                                      error={"code": "unavailable", "message": str(e)[:300]},
                                      retrying=True)
            await self.settle.nak(msg)
            return "retry"
        await msg.ack()
        self.c.inc("jobs", "accepted")
        return "accepted"

    async def refuse(self, msg, job_id: str, sub: str, e: ContractError) -> str:
        self.c.inc("jobs", e.code.value)
        await self.status.publish(job_id, "error", f"refused:{sub}",
                                  error={"code": e.code.value, "message": e.message})
        await self.settle.dead_letter(msg, f"{e.code.value}: {e.message}",
                                      subject=f"{S.DLQ_BENCH_JOB}.{e.code.value}",
                                      msg_id=f"bench-job:{sub}")
        return "refused"

    async def start(self, job: BenchJob, sub: str) -> None:
        found = await asyncio.to_thread(self.tracker.finished_cells, job.experiment, job.id)
        found.update(await self.store.done(job.id))
        attempts = await self.store.start_submission(job.id, job.experiment, job.n_cells, found)
        done = len(found)
        await self.status.publish(job.id, "accepted", f"accepted:{sub}",
                                  experiment=job.experiment, done=done, failed=0,
                                  total=job.n_cells, resumed=done > 0, config=job.config(),
                                  eta_s=None)
        await self.advance(job, attempts=attempts, sub=sub)

    async def advance(self, job: BenchJob, attempts: dict[int, int] | None = None,
                      sub: str = "") -> None:
        """Publish the first unfinished phase's pending cells, or finish the job."""
        done = await self.store.done(job.id)
        failed = await self.store.failed(job.id)
        settled = set(done) | set(failed)
        pending = [c for c in job.cells() if c.n not in settled]
        if not pending:
            await self.finish(job, sub)
            return
        phase = pending[0].phase
        if attempts is None:
            attempts = await self.store.attempts(job.id)
        for c in pending:
            if c.phase != phase:
                break
            await self.js.publish(
                S.bench_cell_subject(job.id, c.n), dumps(cell_message(job, c)),
                headers={"Nats-Msg-Id": f"bench-cell:{job.id}:{c.n}:a{attempts.get(c.n, 0)}"},
                timeout=5.0)

    async def advance_after(self, job: BenchJob, phase: int) -> None:
        """After a cell of ``phase`` settled: the next phase once this one is complete."""
        done = await self.store.done(job.id)
        failed = await self.store.failed(job.id)
        settled = set(done) | set(failed)
        if not [c for c in job.phase_cells(phase) if c.n not in settled]:
            await self.advance(job)

    async def finish(self, job: BenchJob, sub: str) -> None:
        if not await self.store.mark_completed(job.id):
            return  # another worker finished it (exactly one does, by a Redis flag)
        board, chart_run = None, None
        try:
            board, chart_run = await asyncio.to_thread(self._log_leaderboard, job)
        except Exception as e:  # noqa: BLE001 - the runs are there; the chart can be redone
            log.warning("leaderboard for %s not logged: %s", job.id, e)
        prog = await self.status.progress(job)
        prog["eta_s"] = 0.0
        await self.status.publish(job.id, "done", f"done:{sub or 'cell'}:{prog['done']}",
                                  **prog, leaderboard=board, leaderboard_run_id=chart_run)

    def _log_leaderboard(self, job: BenchJob) -> tuple[dict, str]:
        runs = [LB.run_summary(r) for r in self.tracker.cell_runs(job.experiment, job_id=job.id)]
        board = LB.compute(runs, judge="auto", seed=job.seed)
        fig = LB.chart(board, f"{job.experiment} · job {job.id}")
        import matplotlib.pyplot as plt

        try:
            rid = self.tracker.log_summary(
                job.experiment, "leaderboard", f"leaderboard {job.id}",
                tags={"job_id": job.id}, metrics=LB.summary_metrics(board),
                artifacts={"leaderboard.json": board, "job.json": job.model_dump()},
                figure=fig)
        finally:
            plt.close(fig)
        return board, rid
